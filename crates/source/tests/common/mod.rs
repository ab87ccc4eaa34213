//! Helpers shared by the manifest-directory tests.

use std::path::Path;

use rvs_model::Problem;

/// Writes `text` to `root/rel`, creating directories on the way.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Problems as displayed, with the directory's path left off.
pub fn texts(root: &Path, problems: &[Problem]) -> Vec<String> {
    let prefix = format!("{}/", root.display());
    problems
        .iter()
        .map(|p| p.to_string().replace(&prefix, ""))
        .collect()
}
