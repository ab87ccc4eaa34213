//! The webhook's decisions on the AdmissionReview JSON a 1.33 API server sends
//! (tests/fixtures/kube), edited per case.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use rvs_fakeapi::fixture;
use rvs_model::ingress::GatewayOptions;
use rvs_model::{ObjectSet, Origin, Sourced};
use rvs_webhook::{review, ReviewError};
use serde_json::{json, Value};

fn stored(ingresses: &[Value]) -> ObjectSet {
    let class: IngressClass = serde_json::from_value(fixture("ingressclass-rvs.json")).unwrap();
    ObjectSet {
        ingress_classes: vec![Sourced {
            origin: Origin::Api,
            object: std::sync::Arc::new(class),
        }],
        ingresses: ingresses
            .iter()
            .map(|i| Sourced {
                origin: Origin::Api,
                object: serde_json::from_value::<Ingress>(i.clone()).unwrap().into(),
            })
            .collect(),
        ..ObjectSet::default()
    }
}

/// The answer's `response`.
fn answer(request: &Value, existing: &ObjectSet) -> Value {
    let body = serde_json::to_vec(request).unwrap();
    let review = review(&body, existing, &GatewayOptions::default()).unwrap();
    let json = serde_json::to_value(&review).unwrap();
    assert_eq!(json["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(json["kind"], "AdmissionReview");
    assert_eq!(json["response"]["uid"], request["request"]["uid"]);
    json["response"].clone()
}

fn create_with(annotations: &[(&str, &str)]) -> Value {
    let mut r = fixture("admission-review-create.json");
    for (k, v) in annotations {
        r["request"]["object"]["metadata"]["annotations"][*k] = json!(v);
    }
    r
}

fn denial(response: &Value) -> String {
    assert_eq!(response["allowed"], false, "{response}");
    response["status"]["message"].as_str().unwrap().to_string()
}

#[test]
fn a_valid_ingress_is_allowed_without_warnings() {
    let response = answer(&fixture("admission-review-create.json"), &stored(&[]));
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("warnings").is_none(), "{response}");
}

#[test]
fn a_snippet_is_denied_with_the_gateways_message() {
    let response = answer(&fixture("admission-review-update.json"), &stored(&[]));
    let message = denial(&response);
    assert!(message.contains("Ingress shop/web"), "{message}");
    assert!(message.contains("configuration-snippet"), "{message}");
}

#[test]
fn bad_annotations_are_denied_naming_the_annotation() {
    for (annotations, expected) in [
        (
            vec![("nginx.ingress.kubernetes.io/proxy-read-timeout", "3x")],
            "proxy-read-timeout",
        ),
        (
            vec![("nginx.ingress.kubernetes.io/backend-protocol", "SPDY")],
            "backend-protocol",
        ),
        (
            vec![
                ("nginx.ingress.kubernetes.io/use-regex", "true"),
                ("nginx.ingress.kubernetes.io/rewrite-target", "/$1"),
            ],
            "",
        ),
        (
            vec![("nginx.ingress.kubernetes.io/limit-rps", "-5")],
            "limit-rps",
        ),
    ] {
        let mut request = create_with(&annotations);
        if expected.is_empty() {
            // A path that is not a regular expression, with use-regex on.
            request["request"]["object"]["spec"]["rules"][0]["http"]["paths"][0]["path"] =
                json!("/(unclosed");
            request["request"]["object"]["spec"]["rules"][0]["http"]["paths"][0]["pathType"] =
                json!("ImplementationSpecific");
        }
        let message = denial(&answer(&request, &stored(&[])));
        assert!(message.contains("Ingress shop/web"), "{message}");
        assert!(message.contains(expected), "{annotations:?}: {message}");
    }
}

#[test]
fn a_host_and_path_served_by_an_older_ingress_is_denied() {
    let mut older = fixture("ingress-web.json");
    older["metadata"]["name"] = json!("shop-old");
    older["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    let message = denial(&answer(
        &fixture("admission-review-create.json"),
        &stored(&[older]),
    ));
    assert!(
        message.contains("host shop.example.com path / is already served by Ingress shop/shop-old"),
        "{message}"
    );

    // Its own stored version (an UPDATE of itself) is no conflict.
    let itself = fixture("ingress-web.json");
    let response = answer(&fixture("admission-review-create.json"), &stored(&[itself]));
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn another_class_is_none_of_our_business() {
    let mut request = fixture("admission-review-update.json");
    request["request"]["object"]["spec"]["ingressClassName"] = json!("nginx");
    let response = answer(&request, &stored(&[]));
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn unsupported_annotations_are_allowed_with_a_warning() {
    let request = create_with(&[(
        "nginx.ingress.kubernetes.io/mirror-target",
        "http://mirror/",
    )]);
    let response = answer(&request, &stored(&[]));
    assert_eq!(response["allowed"], true, "{response}");
    let warnings = response["warnings"].to_string();
    assert!(warnings.contains("mirror-target"), "{response}");
}

#[test]
fn deletes_are_allowed() {
    let mut request = fixture("admission-review-update.json");
    request["request"]["operation"] = json!("DELETE");
    let response = answer(&request, &stored(&[]));
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn malformed_reviews_get_clear_errors_never_a_panic() {
    let options = GatewayOptions::default();
    let existing = stored(&[]);
    assert!(matches!(
        review(b"{not json", &existing, &options),
        Err(ReviewError::NotJson(_))
    ));
    assert!(matches!(
        review(b"{\"kind\":\"AdmissionReview\"}", &existing, &options),
        Err(ReviewError::NotAReview)
    ));
    let mut v1beta1 = fixture("admission-review-create.json");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert!(matches!(
        review(&serde_json::to_vec(&v1beta1).unwrap(), &existing, &options),
        Err(ReviewError::NotAReview)
    ));

    // A uid to answer to, but an object that is no Ingress: a readable denial.
    let mut broken = fixture("admission-review-create.json");
    broken["request"]["object"]["spec"] = json!("not an object");
    let message = denial(&answer(&broken, &existing));
    assert!(message.contains("cannot read the request"), "{message}");

    // Arbitrary bytes and truncations of a real review never panic.
    let body = serde_json::to_vec(&fixture("admission-review-update.json")).unwrap();
    for cut in (0..body.len()).step_by(7) {
        let _ = review(&body[..cut], &existing, &options);
    }
}
