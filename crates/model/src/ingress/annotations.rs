//! An Ingress's `nginx.ingress.kubernetes.io/*` and `rvs.io/*` annotations over the
//! ConfigMap's defaults, with ingress-nginx's names, defaults and semantics. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::configmap::REFUSED_SNIPPET;
use super::types::{
    AuthCache, BackendProtocol, Balancing, CanaryRule, CookieAffinity, Cors, ExternalAuth,
    Redirect, RoutePolicy, TemplatePart,
};
use super::values;
use crate::objects::{ObjectRef, Origin, Problem};

pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
pub const RVS_PREFIX: &str = "rvs.io/";

/// What the annotations decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAnnotations {
    pub policy: RoutePolicy,
    /// `use-regex` (or implied by `rewrite-target`): paths are case-insensitive regexes.
    pub use_regex: bool,
    /// `canary: "true"` and its rule.
    pub canary: Option<CanaryRule>,
    /// `auth-type: basic`: the Secret to read users from (the build resolves it).
    pub basic_auth: Option<BasicAuthSource>,
    /// Annotations not honoured (served anyway).
    pub warnings: Vec<Problem>,
    /// Bad values and snippets: the Ingress is refused.
    pub problems: Vec<Problem>,
}

/// Parses `annotations` over `defaults` (the ConfigMap's). `origin` and `object` name the
/// Ingress in problems.
pub fn parse_annotations(
    annotations: &BTreeMap<String, String>,
    defaults: &RoutePolicy,
    origin: &Origin,
    object: &ObjectRef,
) -> ParsedAnnotations {
    let mut p = Parser {
        annotations,
        origin,
        object,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let mut policy = defaults.clone();
    p.timeouts_and_retries(&mut policy);
    p.paths(&mut policy);
    p.access(&mut policy);
    p.limits(&mut policy);
    policy.affinity = p.affinity();
    p.protocol_and_headers(&mut policy);
    policy.cors = p.cors().map(Arc::new);
    policy.redirect = p.redirect();
    p.set(
        "from-to-www-redirect",
        values::boolean,
        &mut policy.from_to_www_redirect,
    );
    let rewrite = policy.rewrite_target.is_some();
    let use_regex = p.get("use-regex", values::boolean).unwrap_or(false) || rewrite;
    let canary = p.canary();
    let basic_auth = p.basic_auth();
    policy.external_auth = p.external_auth().map(Arc::new);
    p.check_keys();
    ParsedAnnotations {
        policy,
        use_regex,
        canary,
        basic_auth,
        warnings: p.warnings,
        problems: p.problems,
    }
}

/// The `nginx.ingress.kubernetes.io/` annotations rvs honours (besides snippets).
const HONOURED: &[&str] = &[
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "proxy-next-upstream",
    "proxy-next-upstream-tries",
    "proxy-next-upstream-timeout",
    "rewrite-target",
    "use-regex",
    "app-root",
    "proxy-body-size",
    "allowlist-source-range",
    "whitelist-source-range",
    "denylist-source-range",
    "limit-rps",
    "limit-rpm",
    "limit-connections",
    "limit-burst-multiplier",
    "limit-allowlist",
    "limit-whitelist",
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
    "affinity",
    "affinity-mode",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-max-age",
    "session-cookie-expires",
    "session-cookie-secure",
    "session-cookie-samesite",
    "session-cookie-change-on-failure",
    "backend-protocol",
    "ssl-redirect",
    "force-ssl-redirect",
    "upstream-vhost",
    "x-forwarded-prefix",
    "enable-access-log",
    "load-balance",
    "upstream-hash-by",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-expose-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "temporal-redirect",
    "temporal-redirect-code",
    "permanent-redirect",
    "permanent-redirect-code",
    "from-to-www-redirect",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "auth-url",
    "auth-method",
    "auth-signin",
    "auth-signin-redirect-param",
    "auth-response-headers",
    "auth-request-redirect",
    "auth-cache-key",
    "auth-cache-duration",
];

/// The `rvs.io/` annotations an Ingress may carry.
const RVS_HONOURED: &[&str] = &["limit-rps", "limit-burst"];

/// `auth-secret` (`[namespace/]name`), `auth-secret-type` and `auth-realm` of
/// `auth-type: basic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuthSource {
    /// None: the Ingress's own namespace.
    pub namespace: Option<String>,
    pub secret: String,
    /// `auth-secret-type: auth-map` (a key per user) instead of `auth-file` (an htpasswd
    /// file under the key `auth`).
    pub map: bool,
    pub realm: String,
}

struct Parser<'a> {
    annotations: &'a BTreeMap<String, String>,
    origin: &'a Origin,
    object: &'a ObjectRef,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Parser<'_> {
    fn report(&self, field: String, message: String) -> Problem {
        Problem {
            origin: self.origin.clone(),
            object: Some(self.object.clone()),
            field,
            message,
        }
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.annotations
            .get(&format!("{NGINX_PREFIX}{name}"))
            .map(String::as_str)
    }

    /// `nginx.ingress.kubernetes.io/<name>` parsed; a bad value is a problem (None).
    fn get<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        self.get_key(&format!("{NGINX_PREFIX}{name}"), parse)
    }

    fn get_key<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let raw = self.annotations.get(key)?;
        match parse(raw) {
            Ok(v) => Some(v),
            Err(message) => {
                let problem = self.report(format!("metadata.annotations[{key}]"), message);
                self.problems.push(problem);
                None
            }
        }
    }

    fn set<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>, slot: &mut T) {
        if let Some(v) = self.get(name, parse) {
            *slot = v;
        }
    }

    fn string(&self, name: &str) -> Option<String> {
        self.raw(name)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    }

    fn timeouts_and_retries(&mut self, policy: &mut RoutePolicy) {
        self.set(
            "proxy-connect-timeout",
            values::seconds,
            &mut policy.connect_timeout,
        );
        self.set(
            "proxy-read-timeout",
            values::seconds,
            &mut policy.read_timeout,
        );
        self.set(
            "proxy-send-timeout",
            values::seconds,
            &mut policy.send_timeout,
        );
        let base = policy.next_upstream;
        if let Some(mut next) = self.get("proxy-next-upstream", |raw| {
            values::next_upstream(raw, &base)
        }) {
            // `retry-non-idempotent` (ConfigMap) applies whatever the conditions.
            next.non_idempotent |= base.non_idempotent;
            policy.next_upstream = next;
        }
        self.set(
            "proxy-next-upstream-tries",
            values::number,
            &mut policy.next_upstream.tries,
        );
        self.set(
            "proxy-next-upstream-timeout",
            values::optional_seconds,
            &mut policy.next_upstream.timeout_total,
        );
    }

    fn paths(&mut self, policy: &mut RoutePolicy) {
        policy.rewrite_target = self.string("rewrite-target");
        if let Some(root) = self.get("app-root", |raw| {
            let root = raw.trim();
            if root.starts_with('/') && !root.contains(char::is_whitespace) {
                Ok(root.to_string())
            } else {
                Err(format!("{raw:?} is not a path starting with /"))
            }
        }) {
            policy.app_root = Some(root);
        }
        if let Some(size) = self.get("proxy-body-size", values::nginx_size) {
            policy.body_size_limit = Some(size).filter(|n| *n > 0);
        }
    }

    fn access(&mut self, policy: &mut RoutePolicy) {
        // `allowlist-` is the newer name of `whitelist-`; it wins when both are set.
        let allow = self
            .raw("allowlist-source-range")
            .map(|_| "allowlist-source-range")
            .unwrap_or("whitelist-source-range");
        self.set(allow, values::cidr_list, &mut policy.allowlist);
        self.set(
            "denylist-source-range",
            values::cidr_list,
            &mut policy.denylist,
        );
        self.set("ssl-redirect", values::boolean, &mut policy.ssl_redirect);
        self.set(
            "force-ssl-redirect",
            values::boolean,
            &mut policy.force_ssl_redirect,
        );
        self.set("enable-access-log", values::boolean, &mut policy.access_log);
    }

    fn limits(&mut self, policy: &mut RoutePolicy) {
        let positive = |raw: &str| values::number::<u32>(raw).map(|n| (n > 0).then_some(n));
        let limits = &mut policy.limits;
        self.set("limit-rps", positive, &mut limits.rps);
        self.set("limit-rpm", positive, &mut limits.rpm);
        self.set("limit-connections", positive, &mut limits.connections);
        self.set(
            "limit-burst-multiplier",
            values::number,
            &mut limits.burst_multiplier,
        );
        let exempt = self
            .raw("limit-allowlist")
            .map(|_| "limit-allowlist")
            .unwrap_or("limit-whitelist");
        self.set(exempt, values::cidr_list, &mut limits.exempt);
        if let Some(rps) = self.get_key(&format!("{RVS_PREFIX}limit-rps"), positive) {
            limits.ingress_rps = rps;
        }
        if let Some(burst) = self.get_key(&format!("{RVS_PREFIX}limit-burst"), positive) {
            limits.ingress_burst = burst;
        }
    }

    fn affinity(&mut self) -> Option<CookieAffinity> {
        let kind = self.get("affinity", |raw| match raw.trim() {
            "cookie" => Ok(true),
            "" => Ok(false),
            other => Err(format!("{other:?} is not supported (only \"cookie\")")),
        })?;
        self.get("affinity-mode", |raw| match raw.trim() {
            "balanced" | "persistent" => Ok(()),
            other => Err(format!("{other:?} is not balanced or persistent")),
        });
        let mut affinity = CookieAffinity {
            name: "INGRESSCOOKIE".into(),
            path: None,
            max_age: None,
            secure: false,
            same_site: None,
            change_on_failure: false,
        };
        if let Some(name) = self.get("session-cookie-name", cookie_name) {
            affinity.name = name;
        }
        affinity.path = self.string("session-cookie-path");
        // `expires` (seconds too) counts when `max-age` is not set.
        let expires = self.get("session-cookie-expires", values::number::<u64>);
        let max_age = self.get("session-cookie-max-age", values::number::<u64>);
        affinity.max_age = max_age.or(expires);
        self.set(
            "session-cookie-secure",
            values::boolean,
            &mut affinity.secure,
        );
        if let Some(same_site) = self.get("session-cookie-samesite", |raw| {
            match raw.trim().to_ascii_lowercase().as_str() {
                "none" => Ok("None".to_string()),
                "lax" => Ok("Lax".to_string()),
                "strict" => Ok("Strict".to_string()),
                _ => Err(format!("{raw:?} is not None, Lax or Strict")),
            }
        }) {
            affinity.same_site = Some(same_site);
        }
        self.set(
            "session-cookie-change-on-failure",
            values::boolean,
            &mut affinity.change_on_failure,
        );
        kind.then_some(affinity)
    }

    fn protocol_and_headers(&mut self, policy: &mut RoutePolicy) {
        self.set(
            "backend-protocol",
            backend_protocol,
            &mut policy.backend_protocol,
        );
        self.set("load-balance", values::load_balance, &mut policy.balancing);
        if let Some(key) = self.get("upstream-hash-by", values::template) {
            policy.balancing = Balancing::Hash(key);
        }
        policy.upstream_vhost = self.string("upstream-vhost");
        policy.forwarded_prefix = self.string("x-forwarded-prefix");
    }

    fn canary(&mut self) -> Option<CanaryRule> {
        if !self.get("canary", values::boolean).unwrap_or(false) {
            return None;
        }
        let mut rule = CanaryRule {
            by_header: self.string("canary-by-header"),
            header_value: self.string("canary-by-header-value"),
            by_cookie: self.string("canary-by-cookie"),
            weight: 0,
            weight_total: 100,
        };
        self.set(
            "canary-weight-total",
            |raw| {
                values::number::<u32>(raw).and_then(|n| {
                    if n > 0 {
                        Ok(n)
                    } else {
                        Err(format!("{raw:?} is not a positive integer"))
                    }
                })
            },
            &mut rule.weight_total,
        );
        let total = rule.weight_total;
        self.set(
            "canary-weight",
            |raw| {
                values::number::<u32>(raw).and_then(|n| {
                    if n <= total {
                        Ok(n)
                    } else {
                        Err(format!(
                            "{raw:?} is more than canary-weight-total ({total})"
                        ))
                    }
                })
            },
            &mut rule.weight,
        );
        Some(rule)
    }

    /// `enable-cors: "true"` and the `cors-*` values over ingress-nginx's defaults (read
    /// only when CORS is on).
    fn cors(&mut self) -> Option<Cors> {
        if !self.get("enable-cors", values::boolean).unwrap_or(false) {
            return None;
        }
        let mut cors = Cors::default();
        self.set(
            "cors-allow-origin",
            values::cors_origins,
            &mut cors.allow_origin,
        );
        self.set(
            "cors-allow-methods",
            values::cors_methods,
            &mut cors.allow_methods,
        );
        self.set(
            "cors-allow-headers",
            values::cors_headers,
            &mut cors.allow_headers,
        );
        if let Some(expose) = self.get("cors-expose-headers", values::cors_expose_headers) {
            cors.expose_headers = Some(expose);
        }
        self.set(
            "cors-allow-credentials",
            values::boolean,
            &mut cors.allow_credentials,
        );
        self.set("cors-max-age", values::number, &mut cors.max_age);
        Some(cors)
    }

    /// `auth-type: basic` (`digest` is refused: nginx never had it either without a module).
    fn basic_auth(&mut self) -> Option<BasicAuthSource> {
        self.get("auth-type", |raw| match raw.trim() {
            "basic" => Ok(()),
            "digest" => Err("\"digest\" is not supported by rvs (use basic)".to_string()),
            other => Err(format!("{other:?} is not an authentication type (basic)")),
        })?;
        let secret = self.get("auth-secret", |raw| {
            let raw = raw.trim();
            let (namespace, name) = match raw.split_once('/') {
                Some((ns, name)) => (Some(ns), name),
                None => (None, raw),
            };
            let dns_label = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
            };
            if dns_label(name) && namespace.is_none_or(dns_label) {
                Ok((namespace.map(String::from), name.to_string()))
            } else {
                Err(format!("{raw:?} is not a Secret name ([namespace/]name)"))
            }
        });
        let Some((namespace, secret)) = secret else {
            if self.raw("auth-secret").is_none() {
                let p = self.report(
                    format!("metadata.annotations[{NGINX_PREFIX}auth-secret]"),
                    "auth-type basic needs the Secret with the users".into(),
                );
                self.problems.push(p);
            }
            return None;
        };
        let map = self
            .get("auth-secret-type", |raw| match raw.trim() {
                "auth-file" => Ok(false),
                "auth-map" => Ok(true),
                other => Err(format!("{other:?} is not auth-file or auth-map")),
            })
            .unwrap_or(false);
        let realm = self
            .get("auth-realm", |raw| {
                let plain = |c: char| c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\');
                if !raw.chars().all(plain) {
                    Err(format!(
                        "{raw:?}: a realm is ASCII text without quotes or backslashes"
                    ))
                } else {
                    Ok(raw.trim().to_string())
                }
            })
            .unwrap_or_default();
        Some(BasicAuthSource {
            namespace,
            secret,
            map,
            realm,
        })
    }

    /// `auth-url` and the annotations that shape its request and its answers.
    fn external_auth(&mut self) -> Option<ExternalAuth> {
        self.string("auth-url")?;
        let url = self.get("auth-url", values::auth_url);
        let method = self
            .get("auth-method", values::http_method)
            .unwrap_or_else(|| "GET".into());
        let signin = self.get("auth-signin", values::auth_url);
        let signin_redirect_param = self
            .get("auth-signin-redirect-param", values::query_param)
            .unwrap_or_else(|| "rd".into());
        let response_headers = self
            .get("auth-response-headers", values::header_names)
            .unwrap_or_default();
        let cache = self.get("auth-cache-key", values::template).map(|key| {
            let (statuses, ttl) = self
                .get("auth-cache-duration", values::auth_cache_duration)
                .unwrap_or_else(|| (vec![200, 202, 401], Duration::from_secs(300)));
            AuthCache { key, statuses, ttl }
        });
        let request_redirect = self.get("auth-request-redirect", |raw| {
            let value = raw.trim();
            if value.chars().any(|c| c.is_control()) {
                Err(format!("{raw:?} has control characters"))
            } else {
                Ok(value.to_string())
            }
        });
        let url = url?;
        // The parts before the first '/' after the scheme make the host: a variable there
        // lets the request choose the auth service, so only `$host` may (the gateway uses it
        // only for exact host names).
        let mut host_parts = Vec::new();
        for (i, part) in url.parts.iter().enumerate() {
            match part {
                TemplatePart::Literal(text) => {
                    let text = if i == 0 {
                        text.split_once("://").map_or("", |(_, rest)| rest)
                    } else {
                        text
                    };
                    if text.contains(['/', '?']) {
                        break;
                    }
                }
                variable => host_parts.push(variable),
            }
        }
        if host_parts.iter().any(|p| **p != TemplatePart::Host) {
            let p = self.report(
                format!("metadata.annotations[{NGINX_PREFIX}auth-url]"),
                format!(
                    "{:?}: only $host may be part of the host (the client would choose the auth service)",
                    url.template
                ),
            );
            self.problems.push(p);
            return None;
        }
        let host_from_request = !host_parts.is_empty();
        Some(ExternalAuth {
            url,
            host_from_request,
            method,
            signin,
            signin_redirect_param,
            response_headers,
            request_redirect,
            cache,
        })
    }

    /// `temporal-redirect` wins over `permanent-redirect`, as in ingress-nginx.
    fn redirect(&mut self) -> Option<Redirect> {
        for (name, default_status) in [("temporal-redirect", 302), ("permanent-redirect", 301)] {
            if self.string(name).is_none() {
                continue;
            }
            let location = self.get(name, values::redirect_location)?;
            let status = self
                .get(&format!("{name}-code"), values::redirect_code)
                .unwrap_or(default_status);
            return Some(Redirect { status, location });
        }
        None
    }

    /// Snippets are refused; unknown `nginx.ingress.kubernetes.io/` and `rvs.io/`
    /// annotations are warned about.
    fn check_keys(&mut self) {
        for key in self.annotations.keys() {
            if let Some(name) = key.strip_prefix(NGINX_PREFIX) {
                if name.ends_with("-snippet") {
                    let p = self.report(
                        String::new(),
                        format!("annotation {name}: {REFUSED_SNIPPET}"),
                    );
                    self.problems.push(p);
                } else if !HONOURED.contains(&name) {
                    let w = self.report(
                        String::new(),
                        format!("annotation {name}: not supported by rvs; ignored"),
                    );
                    self.warnings.push(w);
                }
            } else if let Some(name) = key.strip_prefix(RVS_PREFIX) {
                if !RVS_HONOURED.contains(&name) {
                    let w = self.report(
                        String::new(),
                        format!("annotation {key}: not supported on an Ingress; ignored"),
                    );
                    self.warnings.push(w);
                }
            }
        }
    }
}

fn backend_protocol(raw: &str) -> Result<BackendProtocol, String> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "HTTP" => Ok(BackendProtocol::Http),
        "HTTPS" => Ok(BackendProtocol::Https),
        "GRPC" => Ok(BackendProtocol::Grpc),
        "GRPCS" => Ok(BackendProtocol::Grpcs),
        "HTTP2" => Ok(BackendProtocol::Http2),
        _ => Err(format!(
            "{raw:?}: unknown backend protocol (rvs speaks HTTP, HTTPS, GRPC, GRPCS and HTTP2)"
        )),
    }
}

/// A cookie name: an RFC 6265 token.
fn cookie_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    if !name.is_empty() && name.chars().all(token) {
        Ok(name.to_string())
    } else {
        Err(format!("{raw:?} is not a cookie name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::{CorsOrigins, TemplatePart};
    use std::time::Duration;

    fn object() -> ObjectRef {
        ObjectRef {
            kind: "Ingress".into(),
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    fn parse(pairs: &[(&str, &str)]) -> ParsedAnnotations {
        let map = pairs
            .iter()
            .map(|(k, v)| {
                let key = if k.contains('/') {
                    k.to_string()
                } else {
                    format!("{NGINX_PREFIX}{k}")
                };
                (key, v.to_string())
            })
            .collect();
        parse_annotations(&map, &RoutePolicy::default(), &Origin::Api, &object())
    }

    /// Each set of annotations is refused with a problem containing its text (a problem
    /// refuses the whole Ingress: none of its routes is served, unguarded or otherwise).
    fn assert_refused(cases: &[(Vec<(&str, &str)>, &str)]) {
        for (pairs, needle) in cases {
            let problems = texts(&parse(pairs).problems);
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{pairs:?}: {problems:#?}"
            );
        }
    }

    fn texts(v: &[Problem]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn none_is_the_defaults() {
        let a = parse(&[]);
        assert_eq!(a.policy, RoutePolicy::default());
        assert!(!a.use_regex && a.canary.is_none());
        assert!(a.problems.is_empty() && a.warnings.is_empty());
    }

    #[test]
    fn defaults_come_from_the_configmap() {
        let defaults = RoutePolicy {
            read_timeout: Duration::from_secs(5),
            ssl_redirect: false,
            ..RoutePolicy::default()
        };
        let a = parse_annotations(&BTreeMap::new(), &defaults, &Origin::Api, &object());
        assert_eq!(a.policy, defaults);
    }

    #[test]
    fn honoured_annotations() {
        let a = parse(&[
            ("proxy-connect-timeout", "2"),
            ("proxy-read-timeout", "300"),
            ("proxy-send-timeout", "10s"),
            ("proxy-next-upstream", "error timeout http_503"),
            ("proxy-next-upstream-tries", "4"),
            ("proxy-next-upstream-timeout", "20"),
            ("app-root", "/app"),
            ("proxy-body-size", "0"),
            ("whitelist-source-range", "10.0.0.0/8"),
            ("allowlist-source-range", "192.168.0.1"),
            ("denylist-source-range", "10.9.0.0/16"),
            ("limit-rps", "10"),
            ("limit-rpm", "0"),
            ("limit-connections", "3"),
            ("limit-burst-multiplier", "2"),
            ("limit-whitelist", "127.0.0.1"),
            ("backend-protocol", "grpcs"),
            ("ssl-redirect", "false"),
            ("force-ssl-redirect", "true"),
            ("upstream-vhost", "internal.example"),
            ("x-forwarded-prefix", "/api"),
            ("enable-access-log", "false"),
            ("rvs.io/limit-rps", "100"),
            ("rvs.io/limit-burst", "200"),
        ]);
        assert_eq!(texts(&a.problems), Vec::<String>::new());
        assert_eq!(texts(&a.warnings), Vec::<String>::new());
        let p = &a.policy;
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.read_timeout, Duration::from_secs(300));
        assert_eq!(p.send_timeout, Duration::from_secs(10));
        assert!(p.next_upstream.http_503 && !p.next_upstream.http_502);
        assert_eq!(p.next_upstream.tries, 4);
        assert_eq!(p.next_upstream.timeout_total, Some(Duration::from_secs(20)));
        assert_eq!(p.app_root.as_deref(), Some("/app"));
        assert_eq!(p.body_size_limit, None);
        let shown = |v: &[ipnet::IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(shown(&p.allowlist), ["192.168.0.1/32"]);
        assert_eq!(shown(&p.denylist), ["10.9.0.0/16"]);
        assert_eq!(p.limits.rps, Some(10));
        assert_eq!(p.limits.rpm, None);
        assert_eq!(p.limits.connections, Some(3));
        assert_eq!(p.limits.burst_multiplier, 2);
        assert_eq!(shown(&p.limits.exempt), ["127.0.0.1/32"]);
        assert_eq!(p.limits.ingress_rps, Some(100));
        assert_eq!(p.limits.ingress_burst, Some(200));
        assert_eq!(p.backend_protocol, BackendProtocol::Grpcs);
        assert!(!p.ssl_redirect && p.force_ssl_redirect && !p.access_log);
        assert_eq!(p.upstream_vhost.as_deref(), Some("internal.example"));
        assert_eq!(p.forwarded_prefix.as_deref(), Some("/api"));
        assert!(!a.use_regex);
    }

    #[test]
    fn rewrite_target_implies_regex() {
        let a = parse(&[("rewrite-target", "/$2")]);
        assert!(a.use_regex);
        assert_eq!(a.policy.rewrite_target.as_deref(), Some("/$2"));
        assert!(parse(&[("use-regex", "true")]).use_regex);
        assert!(!parse(&[("use-regex", "false")]).use_regex);
    }

    #[test]
    fn retry_non_idempotent_survives_the_annotation() {
        let mut defaults = RoutePolicy::default();
        defaults.next_upstream.non_idempotent = true;
        let map = BTreeMap::from([(
            format!("{NGINX_PREFIX}proxy-next-upstream"),
            "error http_502".to_string(),
        )]);
        let a = parse_annotations(&map, &defaults, &Origin::Api, &object());
        assert!(a.policy.next_upstream.non_idempotent);
    }

    #[test]
    fn affinity() {
        let a = parse(&[
            ("affinity", "cookie"),
            ("affinity-mode", "persistent"),
            ("session-cookie-path", "/x"),
            ("session-cookie-expires", "100"),
            ("session-cookie-secure", "true"),
            ("session-cookie-samesite", "lax"),
            ("session-cookie-change-on-failure", "true"),
        ]);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(
            a.policy.affinity,
            Some(CookieAffinity {
                name: "INGRESSCOOKIE".into(),
                path: Some("/x".into()),
                max_age: Some(100),
                secure: true,
                same_site: Some("Lax".into()),
                change_on_failure: true,
            })
        );
        let a = parse(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
            ("session-cookie-max-age", "5"),
            ("session-cookie-expires", "100"),
        ]);
        let affinity = a.policy.affinity.unwrap();
        assert_eq!(
            (affinity.name.as_str(), affinity.max_age),
            ("route", Some(5))
        );
        // Cookie settings without affinity do nothing.
        assert_eq!(parse(&[("session-cookie-name", "x")]).policy.affinity, None);
    }

    #[test]
    fn canary_rule() {
        let a = parse(&[
            ("canary", "true"),
            ("canary-by-header", "X-Canary"),
            ("canary-by-header-value", "yes"),
            ("canary-by-cookie", "canary"),
            ("canary-weight", "30"),
            ("canary-weight-total", "1000"),
        ]);
        assert_eq!(
            a.canary,
            Some(CanaryRule {
                by_header: Some("X-Canary".into()),
                header_value: Some("yes".into()),
                by_cookie: Some("canary".into()),
                weight: 30,
                weight_total: 1000,
            })
        );
        assert_eq!(
            parse(&[("canary", "false"), ("canary-weight", "5")]).canary,
            None
        );
        let bad = parse(&[("canary", "true"), ("canary-weight", "150")]);
        assert_eq!(
            texts(&bad.problems),
            ["api: Ingress default/web: metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]: \"150\" is more than canary-weight-total (100)"]
        );
    }

    #[test]
    fn bad_values_are_problems() {
        let a = parse(&[
            ("proxy-read-timeout", "3x"),
            ("backend-protocol", "AJP"),
            ("affinity", "ip_hash"),
            ("app-root", "app"),
            ("limit-rps", "-1"),
            ("ssl-redirect", "yes"),
            ("whitelist-source-range", "10.0.0.0/8, bad"),
            ("proxy-next-upstream", "error http_418"),
        ]);
        let problems = texts(&a.problems);
        let field = |k: &str| {
            format!(
                "api: Ingress default/web: metadata.annotations[nginx.ingress.kubernetes.io/{k}]: "
            )
        };
        assert!(
            problems.contains(&format!(
                "{}\"3x\" is not a number of seconds",
                field("proxy-read-timeout")
            )),
            "{problems:#?}"
        );
        assert!(problems.contains(&format!("{}\"AJP\": unknown backend protocol (rvs speaks HTTP, HTTPS, GRPC, GRPCS and HTTP2)", field("backend-protocol"))), "{problems:#?}");
        assert!(
            problems.contains(&format!(
                "{}\"ip_hash\" is not supported (only \"cookie\")",
                field("affinity")
            )),
            "{problems:#?}"
        );
        assert!(
            problems.contains(&format!(
                "{}\"bad\" is not a CIDR or IP address",
                field("whitelist-source-range")
            )),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 8, "{problems:#?}");
        for protocol in ["FCGI", "ajp", "h2c"] {
            assert_eq!(parse(&[("backend-protocol", protocol)]).problems.len(), 1);
        }
        for protocol in ["HTTP", "https", "GRPC", "grpcs", "Http2"] {
            assert!(parse(&[("backend-protocol", protocol)]).problems.is_empty());
        }
    }

    #[test]
    fn cors_is_off_unless_enabled_and_takes_ingress_nginx_defaults() {
        let off = parse(&[("cors-allow-origin", "https://a.example")]);
        assert_eq!(off.policy.cors, None);
        assert!(off.warnings.is_empty() && off.problems.is_empty());
        let on = parse(&[("enable-cors", "true")]);
        let cors = on.policy.cors.expect("cors");
        assert_eq!(*cors, Cors::default());
        assert_eq!(cors.allow_origin, CorsOrigins::Any);
        assert_eq!(cors.allow_methods, "GET, PUT, POST, DELETE, PATCH, OPTIONS");
        assert!(cors.allow_credentials);
        assert_eq!(cors.max_age, 1_728_000);
    }

    #[test]
    fn cors_values() {
        let a = parse(&[
            ("enable-cors", "true"),
            (
                "cors-allow-origin",
                "https://app.example.com, http://*.example.org:8080",
            ),
            ("cors-allow-methods", "GET,POST"),
            ("cors-allow-headers", "X-Token, Content-Type"),
            ("cors-expose-headers", "*, X-Trace"),
            ("cors-allow-credentials", "false"),
            ("cors-max-age", "600"),
        ]);
        assert_eq!(texts(&a.problems), Vec::<String>::new());
        let cors = a.policy.cors.expect("cors");
        assert_eq!(
            cors.allow_origin,
            CorsOrigins::Listed(vec![
                "https://app.example.com".into(),
                "http://*.example.org:8080".into()
            ])
        );
        assert_eq!(cors.allow_methods, "GET,POST");
        assert_eq!(cors.allow_headers, "X-Token, Content-Type");
        assert_eq!(cors.expose_headers.as_deref(), Some("*, X-Trace"));
        assert!(!cors.allow_credentials);
        assert_eq!(cors.max_age, 600);
        // A `*` among the origins opens it to all, as in ingress-nginx.
        let any = parse(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.example, *"),
        ]);
        assert_eq!(any.policy.cors.unwrap().allow_origin, CorsOrigins::Any);
    }

    #[test]
    fn bad_cors_values_refuse_the_ingress() {
        let a = parse(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://ok.example, $http_origin"),
            ("cors-allow-methods", "GET; rm -rf"),
            ("cors-allow-headers", "X-A\r\nSet-Cookie: x"),
            ("cors-max-age", "1d"),
        ]);
        let problems = texts(&a.problems);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        for (key, needle) in [
            ("cors-allow-origin", "\"$http_origin\" is not an origin"),
            ("cors-allow-methods", "is not a list of methods"),
            ("cors-allow-headers", "is not a list of header names"),
            ("cors-max-age", "\"1d\" is not a non-negative integer"),
        ] {
            let field = format!("metadata.annotations[nginx.ingress.kubernetes.io/{key}]: ");
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(&field) && p.contains(needle)),
                "{key}: {problems:#?}"
            );
        }
    }

    #[test]
    fn redirects() {
        let permanent = parse(&[("permanent-redirect", "https://new.example.com$request_uri")]);
        let redirect = permanent.policy.redirect.expect("redirect");
        assert_eq!(redirect.status, 301);
        assert_eq!(
            redirect.location.parts,
            [
                TemplatePart::Literal("https://new.example.com".into()),
                TemplatePart::RequestUri
            ]
        );
        let coded = parse(&[
            ("permanent-redirect", "https://$host/moved"),
            ("permanent-redirect-code", "308"),
        ]);
        let redirect = coded.policy.redirect.expect("redirect");
        assert_eq!(redirect.status, 308);
        assert_eq!(
            redirect.location.parts,
            [
                TemplatePart::Literal("https://".into()),
                TemplatePart::Host,
                TemplatePart::Literal("/moved".into())
            ]
        );
        // Temporal wins when both are set (ingress-nginx checks it first).
        let both = parse(&[
            ("permanent-redirect", "https://p.example"),
            ("temporal-redirect", "$scheme://t.example$request_uri"),
        ]);
        let redirect = both.policy.redirect.expect("redirect");
        assert_eq!(redirect.status, 302);
        assert_eq!(
            redirect.location.parts,
            [
                TemplatePart::Scheme,
                TemplatePart::Literal("://t.example".into()),
                TemplatePart::RequestUri
            ]
        );
        assert_eq!(parse(&[]).policy.redirect, None);
    }

    #[test]
    fn bad_redirects_refuse_the_ingress() {
        assert_refused(&[
            (
                vec![("permanent-redirect", "ftp://files.example")],
                "is not an http or https URL",
            ),
            (
                vec![("permanent-redirect", "https://x.example$upstream_addr")],
                "$upstream_addr is not a variable rvs knows",
            ),
            (
                vec![
                    ("temporal-redirect", "https://x.example"),
                    ("temporal-redirect-code", "200"),
                ],
                "\"200\" is not a redirect status (300-308)",
            ),
        ]);
    }

    #[test]
    fn external_auth_annotations() {
        assert_eq!(parse(&[]).policy.external_auth, None);
        let a = parse(&[
            ("auth-url", "http://oauth2-proxy.auth.svc:4180/oauth2/auth"),
            ("auth-method", "post"),
            ("auth-signin", "https://$host/oauth2/start"),
            ("auth-signin-redirect-param", "next"),
            (
                "auth-response-headers",
                "X-Auth-Request-User, X-Auth-Request-Email",
            ),
            ("auth-request-redirect", "/after"),
        ]);
        assert_eq!(texts(&a.problems), Vec::<String>::new());
        assert_eq!(texts(&a.warnings), Vec::<String>::new());
        let auth = a.policy.external_auth.expect("external auth");
        assert_eq!(
            auth.url.parts,
            [TemplatePart::Literal(
                "http://oauth2-proxy.auth.svc:4180/oauth2/auth".into()
            )]
        );
        assert_eq!(auth.method, "POST");
        let signin = auth.signin.as_ref().expect("signin");
        assert_eq!(signin.parts[1], TemplatePart::Host);
        assert_eq!(auth.signin_redirect_param, "next");
        assert_eq!(
            auth.response_headers,
            ["x-auth-request-user", "x-auth-request-email"]
        );
        assert_eq!(auth.request_redirect.as_deref(), Some("/after"));
        assert_eq!(auth.cache, None, "no auth-cache-key: no cache");
        let cached = |duration: Option<&str>| {
            let mut pairs = vec![
                ("auth-url", "http://a/"),
                ("auth-cache-key", "$remote_addr$http_authorization"),
            ];
            pairs.extend(duration.map(|d| ("auth-cache-duration", d)));
            let cache = parse(&pairs)
                .policy
                .external_auth
                .expect("auth")
                .cache
                .clone();
            cache.map(|c| (c.statuses, c.ttl.as_secs()))
        };
        assert_eq!(cached(None), Some((vec![200, 202, 401], 300)));
        assert_eq!(cached(Some("200 30s")), Some((vec![200], 30)));
        assert_eq!(cached(Some("1h")), Some((vec![200, 301, 302], 3600)));
        assert!(!auth.host_from_request);
        for (url, from_request) in [
            ("https://$host/oauth2/auth", true),
            ("https://auth.$host/x", true),
            ("http://a.example/x?for=$host", false),
            ("http://a.example", false),
            ("http://a.example:81/$host", false),
        ] {
            let auth = parse(&[("auth-url", url)])
                .policy
                .external_auth
                .expect("external auth");
            assert_eq!(auth.host_from_request, from_request, "{url}");
        }
        let defaults = parse(&[("auth-url", "https://auth.example.com/check")])
            .policy
            .external_auth
            .expect("external auth");
        assert_eq!(
            (
                defaults.method.as_str(),
                defaults.signin_redirect_param.as_str(),
                defaults.signin.is_none(),
                defaults.response_headers.is_empty()
            ),
            ("GET", "rd", true, true)
        );
        assert_refused(&[
            (
                vec![("auth-url", "ftp://x/")],
                "is not an http or https URL",
            ),
            (vec![("auth-url", "http:///path")], "names no host"),
            (
                vec![("auth-url", "http://a/$upstream_addr")],
                "$upstream_addr is not a variable rvs knows",
            ),
            (
                vec![("auth-url", "http://a/"), ("auth-method", "GE T")],
                "is not an HTTP method",
            ),
            (
                vec![
                    ("auth-url", "http://a/"),
                    ("auth-response-headers", "X-User\r\nX-Evil: 1"),
                ],
                "is not a list of header names",
            ),
            (
                vec![("auth-url", "http://a/"), ("auth-signin", "/start")],
                "is not an http or https URL",
            ),
            (
                vec![("auth-url", "http://$http_host/auth")],
                "only $host may be part of the host",
            ),
            (
                vec![("auth-url", "http://auth.example:$arg_port/x")],
                "only $host may be part of the host",
            ),
            (
                vec![
                    ("auth-url", "http://a/"),
                    ("auth-response-headers", "X-User, Content-Length"),
                ],
                "content-length frames or routes the request",
            ),
            (
                vec![
                    ("auth-url", "http://a/"),
                    ("auth-cache-key", "$http_authorization"),
                    ("auth-cache-duration", "200 soon"),
                ],
                "auth-cache-duration",
            ),
        ]);
    }

    #[test]
    fn basic_auth_annotations() {
        assert_eq!(parse(&[]).basic_auth, None);
        let a = parse(&[
            ("auth-type", "basic"),
            ("auth-secret", "auth/users"),
            ("auth-secret-type", "auth-map"),
            ("auth-realm", "Staff only"),
        ]);
        assert_eq!(texts(&a.problems), Vec::<String>::new());
        assert_eq!(
            a.basic_auth,
            Some(BasicAuthSource {
                namespace: Some("auth".into()),
                secret: "users".into(),
                map: true,
                realm: "Staff only".into(),
            })
        );
        let plain = parse(&[("auth-type", "basic"), ("auth-secret", "users")]);
        let source = plain.basic_auth.expect("basic auth");
        assert_eq!((source.namespace, source.map), (None, false));
        assert_refused(&[
            (
                vec![("auth-type", "digest"), ("auth-secret", "u")],
                "\"digest\" is not supported by rvs (use basic)",
            ),
            (
                vec![("auth-type", "basic")],
                "auth-type basic needs the Secret with the users",
            ),
            (
                vec![("auth-type", "basic"), ("auth-secret", "Bad_Name")],
                "is not a Secret name",
            ),
            (
                vec![
                    ("auth-type", "basic"),
                    ("auth-secret", "u"),
                    ("auth-secret-type", "ldap"),
                ],
                "\"ldap\" is not auth-file or auth-map",
            ),
            (
                vec![
                    ("auth-type", "basic"),
                    ("auth-secret", "u"),
                    ("auth-realm", "a\"b"),
                ],
                "a realm is ASCII text without quotes or backslashes",
            ),
        ]);
    }

    #[test]
    fn snippets_are_refused() {
        let a = parse(&[
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("server-snippet", "x"),
            ("auth-snippet", "x"),
            ("stream-snippet", "x"),
            ("modsecurity-snippet", "x"),
            ("anything-snippet", "x"),
        ]);
        let problems = texts(&a.problems);
        assert_eq!(problems.len(), 6);
        assert!(problems.contains(
            &"api: Ingress default/web: annotation configuration-snippet: refused: rvs never executes configuration text".to_string()
        ));
    }

    #[test]
    fn unsupported_annotations_are_warned() {
        let a = parse(&[
            ("auth-keepalive", "10"),
            ("custom-http-errors", "404"),
            ("rvs.io/scheduler", "mh"),
            ("kubernetes.io/ingress.class", "rvs"),
            ("example.com/other", "x"),
        ]);
        assert!(a.problems.is_empty());
        assert_eq!(
            texts(&a.warnings),
            [
                "api: Ingress default/web: annotation auth-keepalive: not supported by rvs; ignored",
                "api: Ingress default/web: annotation custom-http-errors: not supported by rvs; ignored",
                "api: Ingress default/web: annotation rvs.io/scheduler: not supported on an Ingress; ignored",
            ]
        );
    }
}
