//! `rvs check -f DIR`.

use std::path::Path;
use std::process::ExitCode;

use rvs_model::{BuildOptions, Snapshot};
use rvs_source::ManifestDir;

pub fn check(dir: &Path) -> anyhow::Result<ExitCode> {
    let (objects, mut problems) = ManifestDir::new(dir).load()?;
    let (snapshot, built) = Snapshot::build(&objects, &BuildOptions::default(), None);
    problems.extend(built);
    for problem in &problems {
        println!("{problem}");
    }
    if problems.is_empty() {
        eprintln!(
            "{}: {} Services, {} EndpointSlices, {} virtual services: no problems",
            dir.display(),
            objects.services.len(),
            objects.endpoint_slices.len(),
            snapshot.services.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}: {} problems", dir.display(), problems.len());
        Ok(ExitCode::FAILURE)
    }
}
