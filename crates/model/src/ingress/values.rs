//! Value parsers shared by the ConfigMap and the annotations: nginx times and sizes, seconds,
//! booleans, CIDR lists and `proxy-next-upstream`. Each returns the message of a bad value
//! (without the field: the caller names it).

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::types::{Balancing, CorsOrigins, NextUpstream, Template, TemplatePart};

/// nginx time syntax: `60`, `60s`, `500ms`, `1h`, `1h30m`, `2d` (units ms s m h d w M y;
/// none = seconds).
pub fn nginx_duration(raw: &str) -> Result<Duration, String> {
    let bad = || format!("{raw:?} is not a duration (like 60s, 1h or 60)");
    let text = raw.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let millis_per: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "M" => 30 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        // A bare number is only valid alone (`60`), not inside `1h30`.
        if unit.is_empty() && (total != Duration::ZERO || !rest.is_empty()) {
            return Err(bad());
        }
        let millis = number.checked_mul(millis_per).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// A number of seconds as ingress-nginx's `proxy-*-timeout` take it: `60`; also `60s` and
/// the other nginx time forms.
pub fn seconds(raw: &str) -> Result<Duration, String> {
    nginx_duration(raw).map_err(|_| format!("{raw:?} is not a number of seconds"))
}

/// nginx size syntax: `100` (bytes), `8k`, `1m`, `1g` (either case).
pub fn nginx_size(raw: &str) -> Result<u64, String> {
    let bad = || format!("{raw:?} is not a size (like 1m, 8k or 100)");
    let text = raw.trim();
    let (number, multiplier) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&text[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(bad)
}

/// `"true"` or `"false"`.
pub fn boolean(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{raw:?} is not true or false")),
    }
}

/// A non-negative integer that fits `T`.
pub fn number<T: std::str::FromStr>(raw: &str) -> Result<T, String> {
    let text = raw.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse() {
            return Ok(n);
        }
    }
    Err(format!("{raw:?} is not a non-negative integer"))
}

/// An HTTP status code (100-599).
pub fn status_code(raw: &str) -> Result<u16, String> {
    match number::<u16>(raw) {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("{raw:?} is not an HTTP status code")),
    }
}

/// A comma-separated list of CIDRs or plain addresses (`/32`, `/128`); host bits cleared.
pub fn cidr_list(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = match item.parse::<ipnet::IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => match item.parse::<std::net::IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => return Err(format!("{item:?} is not a CIDR or IP address")),
            },
        };
        out.push(net);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// ingress-nginx's checks of the `cors-*` lists (the values go into response headers as
/// written, so only plain tokens pass), with a plain space where it allows any whitespace
/// (a line break would make the header invalid).
static CORS_ORIGIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^https?://(\*\.)?[A-Za-z0-9\-\.]+(:[0-9]+)?$").expect("static regex")
});
static CORS_METHODS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z]+,? ?)+$").expect("static regex"));
static CORS_HEADERS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z0-9\-_]+,? ?)+$").expect("static regex"));
static CORS_EXPOSE_HEADERS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(([A-Za-z0-9\-_]+|\*),? ?)+$").expect("static regex"));

/// `cors-allow-origin`: `*`, or comma-separated `http(s)://host[:port]` origins, where the
/// host may start with `*.` (one label). A `*` among them means any origin.
pub fn cors_origins(raw: &str) -> Result<CorsOrigins, String> {
    let mut listed = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if origin == "*" {
            return Ok(CorsOrigins::Any);
        }
        if !CORS_ORIGIN.is_match(origin) {
            return Err(format!(
                "{origin:?} is not an origin (http(s)://host[:port], host may start with *.)"
            ));
        }
        listed.push(origin.to_string());
    }
    if listed.is_empty() {
        return Err(format!("{raw:?} names no origin"));
    }
    Ok(CorsOrigins::Listed(listed))
}

fn header_list(raw: &str, pattern: &Regex, what: &str) -> Result<String, String> {
    let value = raw.trim();
    if pattern.is_match(value) {
        Ok(value.to_string())
    } else {
        Err(format!("{raw:?} is not a list of {what}"))
    }
}

/// `cors-allow-methods`: method names separated by commas and/or spaces.
pub fn cors_methods(raw: &str) -> Result<String, String> {
    header_list(
        raw,
        &CORS_METHODS,
        "methods (letters, separated by , or space)",
    )
}

/// `cors-allow-headers`: header names separated by commas and/or spaces.
pub fn cors_headers(raw: &str) -> Result<String, String> {
    header_list(
        raw,
        &CORS_HEADERS,
        "header names (letters, digits, - and _)",
    )
}

/// `cors-expose-headers`: header names or `*`.
pub fn cors_expose_headers(raw: &str) -> Result<String, String> {
    header_list(raw, &CORS_EXPOSE_HEADERS, "header names or *")
}

/// A redirect URL (`permanent-redirect`, `temporal-redirect`): http or https (or
/// `$scheme://`), with nginx variables filled in per request (rvs runs no configuration
/// text: a variable it does not know is refused rather than sent literally).
pub fn redirect_location(raw: &str) -> Result<Template, String> {
    let url = raw.trim();
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://")
        || lower.starts_with("https://")
        || url.starts_with("$scheme://"))
    {
        return Err(format!("{raw:?} is not an http or https URL"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{raw:?}: a URL has no spaces or control characters"
        ));
    }
    template(url)
}

/// `auth-url`, `auth-signin`: an http or https URL naming a host; nginx variables filled in
/// per request.
pub fn auth_url(raw: &str) -> Result<Template, String> {
    let lower = raw.trim().to_ascii_lowercase();
    let after_scheme = lower.split_once("://").map_or("", |(_, rest)| rest);
    if lower.starts_with("http") && (after_scheme.is_empty() || after_scheme.starts_with('/')) {
        return Err(format!("{raw:?} names no host"));
    }
    if lower.starts_with("$scheme://") {
        return Err(format!("{raw:?} is not an http or https URL"));
    }
    redirect_location(raw)
}

/// `auth-cache-duration`: status codes, then a time (`200 202 401 5m`); a time alone is
/// nginx's `proxy_cache_valid` default set (200, 301, 302).
pub fn auth_cache_duration(raw: &str) -> Result<(Vec<u16>, Duration), String> {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let Some((time, codes)) = words.split_last() else {
        return Err(format!(
            "{raw:?} is not status codes and a time (200 202 401 5m)"
        ));
    };
    let ttl = nginx_duration(time)?;
    let statuses = if codes.is_empty() {
        vec![200, 301, 302]
    } else {
        codes
            .iter()
            .map(|c| status_code(c))
            .collect::<Result<Vec<u16>, String>>()?
    };
    Ok((statuses, ttl))
}

/// `auth-method`: an HTTP method token (upper-cased).
pub fn http_method(raw: &str) -> Result<String, String> {
    let method = raw.trim();
    if !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(method.to_ascii_uppercase())
    } else {
        Err(format!("{raw:?} is not an HTTP method"))
    }
}

/// `auth-response-headers`: header names separated by commas (lower-cased). Not ones that
/// frame or route the request: the auth service adds to a request, it does not reshape it.
pub fn header_names(raw: &str) -> Result<Vec<String>, String> {
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
    ];
    let names: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let token = |n: &String| {
        n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if names.is_empty() || !names.iter().all(token) {
        return Err(format!(
            "{raw:?} is not a list of header names (letters, digits, - and _, separated by ,)"
        ));
    }
    if let Some(reserved) = names.iter().find(|n| RESERVED.contains(&n.as_str())) {
        return Err(format!(
            "{reserved} frames or routes the request; an auth service cannot set it"
        ));
    }
    Ok(names)
}

/// A query parameter name (`auth-signin-redirect-param`).
pub fn query_param(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Ok(name.to_string())
    } else {
        Err(format!("{raw:?} is not a query parameter name"))
    }
}

/// A redirect's status (`permanent-redirect-code`, `temporal-redirect-code`): 300-308.
pub fn redirect_code(raw: &str) -> Result<u16, String> {
    match number::<u16>(raw) {
        Ok(code) if (300..=308).contains(&code) => Ok(code),
        _ => Err(format!("{raw:?} is not a redirect status (300-308)")),
    }
}

/// `proxy-next-upstream`: space-separated conditions over `base` (its tries and total timeout
/// are kept). `off` disables retries.
pub fn next_upstream(raw: &str, base: &NextUpstream) -> Result<NextUpstream, String> {
    let mut out = NextUpstream {
        error: false,
        timeout: false,
        http_500: false,
        http_502: false,
        http_503: false,
        http_504: false,
        http_403: false,
        http_404: false,
        http_429: false,
        non_idempotent: false,
        ..*base
    };
    let words: Vec<&str> = raw.split_whitespace().collect();
    if words.is_empty() {
        return Err(format!("{raw:?} names no condition"));
    }
    for word in &words {
        match *word {
            "error" => out.error = true,
            "timeout" => out.timeout = true,
            // Always on in rvs: a response head that does not parse is an error.
            "invalid_header" => out.error = true,
            "http_500" => out.http_500 = true,
            "http_502" => out.http_502 = true,
            "http_503" => out.http_503 = true,
            "http_504" => out.http_504 = true,
            "http_403" => out.http_403 = true,
            "http_404" => out.http_404 = true,
            "http_429" => out.http_429 = true,
            "non_idempotent" => out.non_idempotent = true,
            "off" if words.len() == 1 => {
                return Ok(NextUpstream {
                    tries: 1,
                    timeout_total: base.timeout_total,
                    ..NextUpstream::off()
                })
            }
            other => {
                return Err(format!(
                    "{other:?} is not one of error, timeout, invalid_header, http_500, \
                     http_502, http_503, http_504, http_403, http_404, http_429, \
                     non_idempotent, off (alone)"
                ))
            }
        }
    }
    Ok(out)
}

/// `proxy-next-upstream-timeout`: seconds, 0 = no limit.
pub fn optional_seconds(raw: &str) -> Result<Option<Duration>, String> {
    seconds(raw).map(|d| (!d.is_zero()).then_some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cors_lists_are_tokens_on_one_line() {
        assert_eq!(cors_methods("GET, POST").as_deref(), Ok("GET, POST"));
        assert_eq!(cors_methods("GET,POST").as_deref(), Ok("GET,POST"));
        assert!(
            cors_methods("GET\nPOST").is_err(),
            "a line break splits the header"
        );
        assert!(cors_headers("X-A,\tX-B").is_err());
        assert_eq!(
            cors_expose_headers("*, X-Trace").as_deref(),
            Ok("*, X-Trace")
        );
    }

    #[test]
    fn durations() {
        let ok = |s: &str| nginx_duration(s).unwrap();
        assert_eq!(ok("60"), Duration::from_secs(60));
        assert_eq!(ok("60s"), Duration::from_secs(60));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("2d"), Duration::from_secs(2 * 86_400));
        assert_eq!(ok("1w"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok(" 240s "), Duration::from_secs(240));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in ["", "3x", "s", "-5", "1.5s", "1h30", "60 s x", "h1", "1hh"] {
            assert!(nginx_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            seconds("3x").unwrap_err(),
            "\"3x\" is not a number of seconds"
        );
        assert_eq!(optional_seconds("0").unwrap(), None);
        assert_eq!(optional_seconds("5").unwrap(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn sizes() {
        assert_eq!(nginx_size("100"), Ok(100));
        assert_eq!(nginx_size("8k"), Ok(8192));
        assert_eq!(nginx_size("8K"), Ok(8192));
        assert_eq!(nginx_size("1m"), Ok(1 << 20));
        assert_eq!(nginx_size("1g"), Ok(1 << 30));
        assert_eq!(nginx_size("0"), Ok(0));
        for bad in ["", "m", "1.5m", "1t", "-1", "1 m", "99999999999999999999g"] {
            assert!(nginx_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            nginx_size("1t").unwrap_err(),
            "\"1t\" is not a size (like 1m, 8k or 100)"
        );
    }

    #[test]
    fn booleans_numbers_codes() {
        assert_eq!(boolean("true"), Ok(true));
        assert_eq!(boolean("false"), Ok(false));
        assert!(boolean("yes").is_err());
        assert_eq!(number::<u32>("42"), Ok(42));
        assert!(number::<u32>("-1").is_err());
        assert!(number::<u32>("4294967296").is_err());
        assert_eq!(status_code("429"), Ok(429));
        assert!(status_code("99").is_err());
        assert!(status_code("600").is_err());
    }

    #[test]
    fn cidrs() {
        let nets = cidr_list("10.0.0.0/8, 192.168.1.7,2001:db8::1 ,10.1.2.3/16,").unwrap();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0/8",
                "10.1.0.0/16",
                "192.168.1.7/32",
                "2001:db8::1/128"
            ]
        );
        assert_eq!(cidr_list("").unwrap(), vec![]);
        assert_eq!(
            cidr_list("10.0.0.0/8,nope").unwrap_err(),
            "\"nope\" is not a CIDR or IP address"
        );
        assert!(cidr_list("10.0.0.0/33").is_err());
    }

    #[test]
    fn next_upstreams() {
        let base = NextUpstream {
            tries: 5,
            ..NextUpstream::default()
        };
        let n = next_upstream("error timeout http_502 http_503", &base).unwrap();
        assert!(n.error && n.timeout && n.http_502 && n.http_503);
        assert!(!n.http_500 && !n.non_idempotent);
        assert_eq!(n.tries, 5);
        let n = next_upstream("http_404 non_idempotent", &base).unwrap();
        assert!(!n.error && !n.timeout && n.http_404 && n.non_idempotent);
        let off = next_upstream("off", &base).unwrap();
        assert!(!off.error && !off.timeout);
        assert_eq!(off.tries, 1);
        assert!(next_upstream("off error", &base).is_err());
        assert!(next_upstream("http_418", &base).is_err());
        assert!(next_upstream("  ", &base).is_err());
    }

    proptest! {
        #[test]
        fn duration_units_roundtrip(n in 0u64..1_000_000, unit in 0usize..6) {
            let (suffix, secs) = [("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400), ("w", 604_800)][unit];
            prop_assert_eq!(nginx_duration(&format!("{n}{suffix}")), Ok(Duration::from_secs(n * secs)));
        }

        #[test]
        fn duration_sums(h in 0u64..1000, m in 0u64..1000, s in 0u64..1000) {
            prop_assert_eq!(
                nginx_duration(&format!("{h}h{m}m{s}s")),
                Ok(Duration::from_secs(h * 3600 + m * 60 + s))
            );
        }

        #[test]
        fn size_units_roundtrip(n in 0u64..1_000_000, unit in 0usize..4) {
            let (suffix, mult) = [("", 1u64), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)][unit];
            prop_assert_eq!(nginx_size(&format!("{n}{suffix}")), Ok(n * mult));
            prop_assert_eq!(nginx_size(&format!("{n}{}", suffix.to_uppercase())), Ok(n * mult));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,12}") {
            let _ = nginx_duration(&s);
            let _ = nginx_size(&s);
            let _ = cidr_list(&s);
            let _ = next_upstream(&s, &NextUpstream::default());
        }

        #[test]
        fn plain_ips_are_host_routes(a in any::<[u8; 4]>()) {
            let ip = std::net::Ipv4Addr::from(a);
            let nets = cidr_list(&ip.to_string()).unwrap();
            prop_assert_eq!(nets.len(), 1);
            prop_assert_eq!(nets[0].prefix_len(), 32);
            prop_assert!(nets[0].contains(&std::net::IpAddr::V4(ip)));
        }
    }
}

/// `load-balance`: `round_robin` or `ewma` (not `upstream-hash-by`, which has its own key).
pub fn load_balance(raw: &str) -> Result<Balancing, String> {
    match raw.trim() {
        "round_robin" => Ok(Balancing::RoundRobin),
        "ewma" => Ok(Balancing::Ewma),
        other => Err(format!(
            "{other:?} is not a load-balance rvs knows (round_robin, ewma; for hashing use upstream-hash-by)"
        )),
    }
}

/// Literal text and nginx variables (`$request_uri`, `$uri`, `$args`, `$host`,
/// `$remote_addr`, `$scheme`, `$request_method`, `$http_NAME`, `$cookie_NAME`, `$arg_NAME`;
/// `${name}` too): an `upstream-hash-by` key, a redirect's location.
pub fn template(raw: &str) -> Result<Template, String> {
    let template = raw.trim();
    if template.is_empty() {
        return Err("empty template".into());
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        literal.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("{template:?}: unclosed ${{"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(
            variable(name)
                .ok_or_else(|| format!("{template:?}: ${name} is not a variable rvs knows"))?,
        );
        rest = after;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(Template {
        template: template.to_string(),
        parts,
    })
}

fn variable(name: &str) -> Option<TemplatePart> {
    let named = |prefix: &str| {
        name.strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(str::to_ascii_lowercase)
    };
    Some(match name {
        "request_uri" => TemplatePart::RequestUri,
        "escaped_request_uri" => TemplatePart::EscapedRequestUri,
        "uri" | "document_uri" => TemplatePart::Uri,
        "args" | "query_string" => TemplatePart::Args,
        "host" => TemplatePart::Host,
        "remote_addr" | "binary_remote_addr" => TemplatePart::RemoteAddr,
        "scheme" => TemplatePart::Scheme,
        "request_method" => TemplatePart::Method,
        _ => {
            if let Some(h) = named("http_") {
                TemplatePart::Header(h.replace('_', "-"))
            } else if let Some(c) = named("cookie_") {
                TemplatePart::Cookie(c)
            } else if let Some(a) = named("arg_") {
                TemplatePart::Arg(a)
            } else {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn parses_nginx_variables() {
        let k = template("$host${request_uri}-x$http_x_user_id$cookie_sid$arg_id").unwrap();
        assert_eq!(
            k.parts,
            [
                TemplatePart::Host,
                TemplatePart::RequestUri,
                TemplatePart::Literal("-x".into()),
                TemplatePart::Header("x-user-id".into()),
                TemplatePart::Cookie("sid".into()),
                TemplatePart::Arg("id".into()),
            ]
        );
        assert_eq!(
            template("$remote_addr").unwrap().parts,
            [TemplatePart::RemoteAddr]
        );
        assert!(template("$nope")
            .unwrap_err()
            .contains("$nope is not a variable"));
        assert!(template("${uri").is_err());
        assert!(template("  ").is_err());
    }

    #[test]
    fn load_balance_values() {
        assert_eq!(load_balance("ewma"), Ok(Balancing::Ewma));
        assert_eq!(load_balance("round_robin"), Ok(Balancing::RoundRobin));
        assert!(load_balance("chash").is_err());
    }
}
