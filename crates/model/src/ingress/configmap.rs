//! The global ConfigMap (`--configmap`): ingress-nginx's keys, names, defaults and value
//! syntax. A bad value is a problem and its key keeps the default; the rest still applies.

use std::collections::BTreeMap;

use super::types::{Balancing, GlobalSettings};
use super::values;
use crate::objects::{ObjectRef, Origin, Problem};

/// Keys ingress-nginx reads as configuration text for nginx: never honoured.
const SNIPPET_KEYS: &[&str] = &[
    "http-snippet",
    "server-snippet",
    "location-snippet",
    "main-snippet",
    "stream-snippet",
];

pub const REFUSED_SNIPPET: &str = "refused: rvs never executes configuration text";

/// Reads the ConfigMap's `data` over ingress-nginx's defaults. Returns the settings, the
/// problems (bad values, snippets: the key keeps its default) and the warnings (keys rvs
/// does not honour).
pub fn parse_config_map(
    data: &BTreeMap<String, String>,
    origin: &Origin,
    object: &ObjectRef,
) -> (GlobalSettings, Vec<Problem>, Vec<Problem>) {
    let mut settings = GlobalSettings::default();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let report = |key: &str, message: String| Problem {
        origin: origin.clone(),
        object: Some(object.clone()),
        field: format!("data[{key}]"),
        message,
    };
    for (key, raw) in data {
        match apply(&mut settings, key, raw) {
            Ok(Applied::Yes) => {}
            Ok(Applied::Unsupported) => {
                warnings.push(report(key, "not supported by rvs; ignored".into()))
            }
            Err(message) => problems.push(report(key, message)),
        }
    }
    (settings, problems, warnings)
}

enum Applied {
    Yes,
    Unsupported,
}

/// Sets one key; on error `settings` is untouched.
fn apply(s: &mut GlobalSettings, key: &str, raw: &str) -> Result<Applied, String> {
    use values::{boolean, cidr_list, nginx_duration, nginx_size, number, seconds};
    let d = &mut s.defaults;
    match key {
        _ if SNIPPET_KEYS.contains(&key) || key.ends_with("-snippet") => {
            return Err(REFUSED_SNIPPET.into())
        }
        "allow-snippet-annotations" => {
            if boolean(raw)? {
                return Err(REFUSED_SNIPPET.into());
            }
        }
        "keep-alive" => s.keep_alive = seconds(raw)?,
        "keep-alive-requests" => s.keep_alive_requests = number(raw)?,
        "upstream-keepalive-connections" => s.upstream_keepalive_connections = number(raw)?,
        "upstream-keepalive-timeout" => s.upstream_keepalive_timeout = seconds(raw)?,
        "upstream-keepalive-requests" => s.upstream_keepalive_requests = number(raw)?,
        "upstream-keepalive-time" => s.upstream_keepalive_time = nginx_duration(raw)?,
        "client-header-timeout" => s.client_header_timeout = seconds(raw)?,
        "client-body-timeout" => s.client_body_timeout = seconds(raw)?,
        "large-client-header-buffers" => s.max_header_bytes = header_buffers(raw)?,
        "worker-shutdown-timeout" => s.worker_shutdown_timeout = nginx_duration(raw)?,
        "limit-req-status-code" => s.limit_req_status = values::status_code(raw)?,
        "limit-conn-status-code" => s.limit_conn_status = values::status_code(raw)?,
        "use-forwarded-headers" => s.use_forwarded_headers = boolean(raw)?,
        "compute-full-forwarded-for" => s.compute_full_forwarded_for = boolean(raw)?,
        "generate-request-id" => s.generate_request_id = boolean(raw)?,
        "use-http2" => s.use_http2 = boolean(raw)?,
        "ssl-redirect" => {
            s.ssl_redirect = boolean(raw)?;
            d.ssl_redirect = s.ssl_redirect;
        }
        "force-ssl-redirect" => d.force_ssl_redirect = boolean(raw)?,
        "hsts" => {
            s.hsts = if boolean(raw)? {
                Some(s.hsts.unwrap_or(HSTS_MAX_AGE))
            } else {
                None
            }
        }
        "hsts-include-subdomains" => s.hsts_include_subdomains = boolean(raw)?,
        "hsts-preload" => s.hsts_preload = boolean(raw)?,
        "no-tls-redirect-locations" => {
            s.no_tls_redirect_locations = raw
                .split(',')
                .map(str::trim)
                .filter(|location| !location.is_empty())
                .map(str::to_string)
                .collect()
        }
        "hsts-max-age" => {
            let age = number(raw)?;
            if let Some(current) = s.hsts.as_mut() {
                *current = age;
            }
        }
        "disable-access-log" => d.access_log = !boolean(raw)?,
        "proxy-connect-timeout" => d.connect_timeout = seconds(raw)?,
        "proxy-read-timeout" => d.read_timeout = seconds(raw)?,
        "proxy-send-timeout" => d.send_timeout = seconds(raw)?,
        "proxy-next-upstream" => {
            let keep = d.next_upstream.non_idempotent;
            d.next_upstream = values::next_upstream(raw, &d.next_upstream)?;
            d.next_upstream.non_idempotent |= keep;
        }
        "proxy-next-upstream-tries" => d.next_upstream.tries = number(raw)?,
        "proxy-next-upstream-timeout" => {
            d.next_upstream.timeout_total = values::optional_seconds(raw)?
        }
        "retry-non-idempotent" => {
            if boolean(raw)? {
                d.next_upstream.non_idempotent = true;
            }
        }
        "proxy-body-size" => d.body_size_limit = Some(nginx_size(raw)?).filter(|n| *n > 0),
        "whitelist-source-range" | "allowlist-source-range" => d.allowlist = cidr_list(raw)?,
        "denylist-source-range" => d.denylist = cidr_list(raw)?,
        // upstream-hash-by wins over load-balance whatever the order of the keys.
        "load-balance" => {
            if !matches!(d.balancing, Balancing::Hash(_)) {
                d.balancing = values::load_balance(raw)?;
            }
        }
        "upstream-hash-by" => d.balancing = Balancing::Hash(values::template(raw)?),
        _ => return Ok(Applied::Unsupported),
    }
    Ok(Applied::Yes)
}

/// ingress-nginx's `hsts-max-age` default.
const HSTS_MAX_AGE: u64 = 31_536_000;

/// `large-client-header-buffers`: `NUMBER SIZE` (`4 8k`): the largest request head.
fn header_buffers(raw: &str) -> Result<usize, String> {
    let bad = || format!("{raw:?} is not a number and a size (like \"4 8k\")");
    let mut parts = raw.split_whitespace();
    let (Some(count), Some(size), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let count: u64 = values::number(count).map_err(|_| bad())?;
    let size = values::nginx_size(size).map_err(|_| bad())?;
    count
        .checked_mul(size)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(pairs: &[(&str, &str)]) -> (GlobalSettings, Vec<String>, Vec<String>) {
        let data = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let object = ObjectRef {
            kind: "ConfigMap".into(),
            namespace: "ingress".into(),
            name: "rvs".into(),
        };
        let (settings, problems, warnings) = parse_config_map(&data, &Origin::Api, &object);
        let show = |v: Vec<Problem>| v.iter().map(ToString::to_string).collect();
        (settings, show(problems), show(warnings))
    }

    #[test]
    fn empty_is_the_defaults() {
        let (settings, problems, warnings) = parse(&[]);
        assert_eq!(settings, GlobalSettings::default());
        // ingress-nginx's defaults.
        assert_eq!(
            settings.hsts_header().as_deref(),
            Some("max-age=31536000; includeSubDomains")
        );
        assert!(settings.never_redirected("/.well-known/acme-challenge/token"));
        assert!(problems.is_empty() && warnings.is_empty());
    }

    #[test]
    fn every_key() {
        let (s, problems, warnings) = parse(&[
            ("keep-alive", "30"),
            ("keep-alive-requests", "50"),
            ("upstream-keepalive-connections", "10"),
            ("upstream-keepalive-timeout", "20s"),
            ("upstream-keepalive-requests", "99"),
            ("upstream-keepalive-time", "30m"),
            ("client-header-timeout", "7"),
            ("client-body-timeout", "8"),
            ("large-client-header-buffers", "4 16k"),
            ("worker-shutdown-timeout", "10s"),
            ("limit-req-status-code", "429"),
            ("limit-conn-status-code", "503"),
            ("use-forwarded-headers", "true"),
            ("compute-full-forwarded-for", "true"),
            ("generate-request-id", "false"),
            ("use-http2", "false"),
            ("ssl-redirect", "false"),
            ("hsts-max-age", "100"),
            ("hsts-include-subdomains", "false"),
            ("hsts-preload", "true"),
            (
                "no-tls-redirect-locations",
                "/.well-known/acme-challenge, /open",
            ),
            ("disable-access-log", "true"),
            ("proxy-connect-timeout", "3"),
            ("proxy-read-timeout", "120s"),
            ("proxy-send-timeout", "30"),
            ("proxy-next-upstream", "error http_502"),
            ("proxy-next-upstream-tries", "2"),
            ("proxy-next-upstream-timeout", "9"),
            ("proxy-body-size", "8m"),
            ("retry-non-idempotent", "true"),
            ("allow-snippet-annotations", "false"),
            ("whitelist-source-range", "10.0.0.0/8"),
        ]);
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(s.keep_alive, Duration::from_secs(30));
        assert_eq!(s.keep_alive_requests, 50);
        assert_eq!(s.upstream_keepalive_connections, 10);
        assert_eq!(s.upstream_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(s.upstream_keepalive_requests, 99);
        assert_eq!(s.upstream_keepalive_time, Duration::from_secs(1800));
        assert_eq!(s.client_header_timeout, Duration::from_secs(7));
        assert_eq!(s.client_body_timeout, Duration::from_secs(8));
        assert_eq!(s.max_header_bytes, 64 * 1024);
        assert_eq!(s.worker_shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.limit_req_status, 429);
        assert_eq!(s.limit_conn_status, 503);
        assert!(s.use_forwarded_headers && s.compute_full_forwarded_for);
        assert!(!s.generate_request_id && !s.use_http2 && !s.ssl_redirect);
        assert!(!s.defaults.ssl_redirect);
        assert_eq!(s.hsts, Some(100));
        assert_eq!(s.hsts_header().as_deref(), Some("max-age=100; preload"));
        assert_eq!(
            s.no_tls_redirect_locations,
            ["/.well-known/acme-challenge", "/open"]
        );
        assert!(s.never_redirected("/open/x") && !s.never_redirected("/"));
        assert!(!s.defaults.access_log);
        let d = &s.defaults;
        assert_eq!(d.connect_timeout, Duration::from_secs(3));
        assert_eq!(d.read_timeout, Duration::from_secs(120));
        assert_eq!(d.send_timeout, Duration::from_secs(30));
        assert!(d.next_upstream.error && d.next_upstream.http_502 && !d.next_upstream.timeout);
        assert!(d.next_upstream.non_idempotent);
        assert_eq!(d.next_upstream.tries, 2);
        assert_eq!(d.next_upstream.timeout_total, Some(Duration::from_secs(9)));
        assert_eq!(d.body_size_limit, Some(8 << 20));
        assert_eq!(d.allowlist.len(), 1);
    }

    #[test]
    fn hsts_off_and_unlimited_body() {
        let (s, problems, _) = parse(&[("hsts", "false"), ("proxy-body-size", "0")]);
        assert!(problems.is_empty());
        assert_eq!(s.hsts, None);
        assert_eq!(s.hsts_header(), None);
        assert_eq!(s.defaults.body_size_limit, None);
    }

    #[test]
    fn bad_values_keep_their_default() {
        let (s, problems, warnings) = parse(&[
            ("proxy-read-timeout", "3x"),
            ("proxy-body-size", "1t"),
            ("keep-alive", "75"),
            ("large-client-header-buffers", "4"),
            ("use-http2", "yes"),
            ("limit-req-status-code", "1000"),
        ]);
        assert_eq!(
            problems,
            [
                "api: ConfigMap ingress/rvs: data[large-client-header-buffers]: \"4\" is not a number and a size (like \"4 8k\")",
                "api: ConfigMap ingress/rvs: data[limit-req-status-code]: \"1000\" is not an HTTP status code",
                "api: ConfigMap ingress/rvs: data[proxy-body-size]: \"1t\" is not a size (like 1m, 8k or 100)",
                "api: ConfigMap ingress/rvs: data[proxy-read-timeout]: \"3x\" is not a number of seconds",
                "api: ConfigMap ingress/rvs: data[use-http2]: \"yes\" is not true or false",
            ]
        );
        assert!(warnings.is_empty());
        let defaults = GlobalSettings::default();
        assert_eq!(s.defaults.read_timeout, defaults.defaults.read_timeout);
        assert_eq!(
            s.defaults.body_size_limit,
            defaults.defaults.body_size_limit
        );
        assert_eq!(s.max_header_bytes, defaults.max_header_bytes);
        assert_eq!(s.keep_alive, Duration::from_secs(75));
    }

    #[test]
    fn snippets_refused_unknown_warned() {
        let (s, problems, warnings) = parse(&[
            ("http-snippet", "lua_shared_dict x 1m;"),
            ("server-snippet", "x"),
            ("location-snippet", "x"),
            ("main-snippet", "x"),
            ("stream-snippet", "x"),
            ("allow-snippet-annotations", "true"),
            ("enable-opentelemetry", "true"),
        ]);
        assert_eq!(problems.len(), 6);
        assert!(
            problems.iter().all(|p| p.ends_with(REFUSED_SNIPPET)),
            "{problems:?}"
        );
        assert_eq!(
            problems[0],
            "api: ConfigMap ingress/rvs: data[allow-snippet-annotations]: refused: rvs never executes configuration text"
        );
        assert_eq!(
            warnings,
            ["api: ConfigMap ingress/rvs: data[enable-opentelemetry]: not supported by rvs; ignored"]
        );
        assert_eq!(s, GlobalSettings::default());
    }
}
