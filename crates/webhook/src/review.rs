//! One AdmissionReview in, one out: the Ingress checked by the gateway's own parser and
//! assembler, against the Ingresses already stored.

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use rvs_model::ingress::{GatewayOptions, IngressSnapshot};
use rvs_model::{ObjectSet, Origin, Problem, Snapshot, Sourced};
use serde_json::Value;

/// A request that cannot be answered with an AdmissionReview (no uid to answer to).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("not an admission.k8s.io/v1 AdmissionReview with a request.uid")]
    NotAReview,
}

/// Answers an AdmissionReview (v1) for an Ingress. `existing` holds the Ingresses and
/// IngressClasses already stored; the reviewed Ingress replaces its own stored version.
pub fn review(
    body: &[u8],
    existing: &ObjectSet,
    options: &GatewayOptions,
) -> Result<AdmissionReview<DynamicObject>, ReviewError> {
    let raw: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let uid = raw
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .filter(|_| {
            raw.get("apiVersion").and_then(Value::as_str) == Some("admission.k8s.io/v1")
                && raw.get("kind").and_then(Value::as_str) == Some("AdmissionReview")
        })
        .ok_or(ReviewError::NotAReview)?
        .to_string();
    let request: AdmissionRequest<Ingress> =
        match serde_json::from_value::<AdmissionReview<Ingress>>(raw)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.try_into()
                    .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
            }) {
            Ok(request) => request,
            Err(e) => {
                // The uid is known: answer with a denial the user can read, not a transport error.
                let mut response =
                    AdmissionResponse::invalid(format!("cannot read the request: {e}"));
                response.uid = uid;
                return Ok(response.into_review());
            }
        };
    Ok(decide(&request, existing, options).into_review())
}

fn decide(
    request: &AdmissionRequest<Ingress>,
    existing: &ObjectSet,
    options: &GatewayOptions,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(ingress) = &request.object else {
        return response.deny("the request has no object");
    };
    let namespace = ingress
        .metadata
        .namespace
        .clone()
        .or_else(|| request.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let name = ingress
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| request.name.clone());
    let mut candidate = ingress.clone();
    candidate.metadata.namespace = Some(namespace.clone());
    candidate.metadata.name = Some(name.clone());
    // A new Ingress is the newest: on a conflict the stored one keeps its paths.
    if candidate.metadata.creation_timestamp.is_none() {
        candidate.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    }

    let mut objects = ObjectSet {
        ingress_classes: existing.ingress_classes.clone(),
        ..ObjectSet::default()
    };
    objects.ingresses = existing
        .ingresses
        .iter()
        .filter(|s| {
            s.object.metadata.namespace.as_deref().unwrap_or("default") != namespace
                || s.object.metadata.name.as_deref() != Some(name.as_str())
        })
        .cloned()
        .collect();
    objects.ingresses.push(Sourced {
        origin: Origin::Api,
        object: candidate.into(),
    });
    let built = IngressSnapshot::build(&objects, &Snapshot::default(), options, None);
    let about_this = |p: &&Problem| {
        p.object
            .as_ref()
            .is_some_and(|o| o.kind == "Ingress" && o.namespace == namespace && o.name == name)
    };
    let denials: Vec<String> = built
        .problems
        .iter()
        .chain(built.conflicts.iter())
        .filter(about_this)
        .map(ToString::to_string)
        .collect();
    if !denials.is_empty() {
        return response.deny(denials.join("; "));
    }
    let warnings: Vec<String> = built
        .warnings
        .iter()
        .filter(about_this)
        .filter(|w| !built.conflicts.contains(w) && !about_unwatched(w))
        .map(ToString::to_string)
        .collect();
    let mut response = response;
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// The webhook watches no Services or Secrets: their absence is for the gateway to report
/// (they may well be created after the Ingress).
fn about_unwatched(warning: &Problem) -> bool {
    let secret = warning.field.starts_with("spec.tls") || warning.field.contains("auth-secret");
    warning.message.starts_with("backend ") || (secret && warning.message.contains("not found"))
}
