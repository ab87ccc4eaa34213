//! `rvs check -f DIR`.

use std::path::Path;
use std::process::ExitCode;

use rvs_model::ingress::{GatewayOptions, IngressSnapshot};
use rvs_model::{BuildOptions, Snapshot};
use rvs_source::ManifestDir;

pub fn check(dir: &Path) -> anyhow::Result<ExitCode> {
    let (objects, mut problems) = ManifestDir::new(dir).load()?;
    let (snapshot, built) = Snapshot::build(&objects, &BuildOptions::default(), None);
    problems.extend(built);
    // Ingresses of the default class (`rvs`), as `rvs run` reads them by default.
    let gateway = IngressSnapshot::build(&objects, &snapshot, &GatewayOptions::default(), None);
    problems.extend(gateway.problems);
    for problem in &problems {
        println!("{problem}");
    }
    // Served, but something is not honoured (an unsupported annotation): not a failure.
    for warning in &gateway.warnings {
        println!("warning: {warning}");
    }
    if problems.is_empty() {
        eprintln!(
            "{}: {} Services, {} EndpointSlices, {} virtual services, {} Ingresses: no problems",
            dir.display(),
            objects.services.len(),
            objects.endpoint_slices.len(),
            snapshot.services.len(),
            gateway.snapshot.ingresses.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}: {} problems", dir.display(), problems.len());
        Ok(ExitCode::FAILURE)
    }
}
