//! `auth-url`: nginx's `auth_request` as ingress-nginx configures it. Before a request goes
//! upstream its head (never its body) is sent to the auth service; 2xx lets it through, 401
//! and 403 go back to the client (401 as a redirect to `auth-signin` when set), anything else
//! is a 500: a broken auth service keeps the route closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use rvs_model::ingress::{BackendProtocol, ExternalAuth, RoutePolicy};

use crate::body::{BodyProgress, ProxyBody, UpstreamBody};
use crate::proxy::{error_response, expand, send, strip_hop_by_hop, ClientView};
use crate::Shared;

/// What the auth service said.
pub(crate) enum Verdict {
    /// Through, with these headers (`auth-response-headers`) set on the upstream request
    /// and these `Set-Cookie`s added to the response.
    Allow {
        headers: Vec<(HeaderName, HeaderValue)>,
        cookies: Vec<HeaderValue>,
    },
    /// Answered here.
    Deny(Response),
}

type Response = http::Response<ProxyBody>;

/// An auth answer's body is read whole (so the connection can be kept) up to this size.
const MAX_AUTH_BODY: usize = 64 * 1024;

/// The request an auth service is asked about, and what asking needs.
pub(crate) struct AuthCheck<'a> {
    pub auth: &'a ExternalAuth,
    /// The request's head.
    pub req: &'a Parts,
    pub client: &'a ClientView,
    pub shared: &'a Shared,
    pub policy: &'a RoutePolicy,
    pub host: &'a str,
    pub request_id: &'a str,
    /// Routed by an exact host name (see `Routed::exact_host`).
    pub exact_host: bool,
}

/// Asks the auth service about the request.
pub(crate) async fn check(ask_about: AuthCheck<'_>) -> Verdict {
    let AuthCheck {
        auth,
        req,
        client,
        shared,
        host,
        exact_host,
        ..
    } = ask_about;
    let grpc = crate::proxy::is_grpc(&req.headers);
    if auth.host_from_request && !exact_host {
        // `https://$host/...` on a wildcard or catch-all route: the client would choose
        // where its credentials are checked (and could answer itself).
        tracing::warn!(
            url = auth.url.template,
            host,
            "auth-url takes its host from the request, which no Ingress names exactly: refused"
        );
        return Verdict::Deny(error_response(StatusCode::INTERNAL_SERVER_ERROR, grpc));
    }
    let url = expand(&auth.url, req, client, host);
    let cache_key = auth
        .cache
        .as_ref()
        .map(|cache| (url.clone(), expand(&cache.key, req, client, host)));
    let cached = cache_key
        .as_ref()
        .and_then(|key| shared.auth_answers.get(key));
    let (status, headers) = match cached {
        Some(answer) => answer,
        None => match ask(&url, &ask_about).await {
            Ok((status, headers)) => {
                if let (Some(cache), Some(key)) = (&auth.cache, cache_key) {
                    // As nginx's proxy_cache: an answer setting a cookie is not kept.
                    let keep = cache.statuses.contains(&status.as_u16())
                        && !headers.contains_key(header::SET_COOKIE);
                    if keep {
                        shared
                            .auth_answers
                            .put(key, (status, headers.clone()), cache.ttl);
                    }
                }
                (status, headers)
            }
            Err(e) => {
                tracing::warn!(url, "auth-url: {e}");
                return Verdict::Deny(error_response(StatusCode::INTERNAL_SERVER_ERROR, grpc));
            }
        },
    };
    match status {
        s if s.is_success() => Verdict::Allow {
            headers: auth
                .response_headers
                .iter()
                .filter_map(|name| {
                    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                    let value = headers.get(&name)?.clone();
                    Some((name, value))
                })
                .collect(),
            cookies: headers
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect(),
        },
        StatusCode::UNAUTHORIZED => match &auth.signin {
            Some(signin) if !grpc => {
                let signin = expand(signin, req, client, host);
                // `rd=$pass_access_scheme://...`: back to the scheme the client used, also
                // behind a load balancer that ended TLS.
                let original = format!(
                    "{}://{}{}",
                    client.access_scheme_str(),
                    crate::proxy::request_authority(req).unwrap_or(host),
                    escape(req.uri.path_and_query().map_or("/", |p| p.as_str()))
                );
                let location = signin_location(&signin, &auth.signin_redirect_param, &original);
                Verdict::Deny(crate::proxy::redirect(StatusCode::FOUND, &location))
            }
            _ => {
                let mut response = error_response(StatusCode::UNAUTHORIZED, grpc);
                if let Some(challenge) = headers.get(header::WWW_AUTHENTICATE) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge.clone());
                }
                Verdict::Deny(response)
            }
        },
        StatusCode::FORBIDDEN => Verdict::Deny(error_response(StatusCode::FORBIDDEN, grpc)),
        other => {
            tracing::warn!(
                url,
                status = other.as_u16(),
                "auth-url answered neither 2xx, 401 nor 403"
            );
            Verdict::Deny(error_response(StatusCode::INTERNAL_SERVER_ERROR, grpc))
        }
    }
}

/// `auth-signin` with the original URL as `param`, unless the sign-in URL sets it already
/// (ingress-nginx's `buildAuthSignURL`).
fn signin_location(signin: &str, param: &str, original: &str) -> String {
    let query = signin.split_once('?').map(|(_, q)| q);
    let has_param = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some(param))
    });
    if has_param {
        return signin.to_string();
    }
    let joiner = if query.is_some() { '&' } else { '?' };
    format!("{signin}{joiner}{param}={original}")
}

/// Percent-encodes all but RFC 3986's unreserved characters (nginx's
/// `$escaped_request_uri`, as ingress-nginx sets it with `ngx.escape_uri`).
pub(crate) fn escape(raw: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error("{0:?} is not an http or https URL with a host")]
    Url(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{0}")]
    Connect(#[from] crate::pool::ConnectError),
    #[error("no answer from {0}")]
    NoAnswer(SocketAddr),
}

/// Sends the auth request; the answer's status and headers.
async fn ask(url: &str, ask_about: &AuthCheck<'_>) -> Result<(StatusCode, HeaderMap), AuthError> {
    let AuthCheck {
        auth,
        req,
        client,
        shared,
        policy,
        host,
        request_id,
        ..
    } = *ask_about;
    let target: Uri = url.parse().map_err(|_| AuthError::Url(url.into()))?;
    let protocol = match target.scheme_str() {
        Some("http") => BackendProtocol::Http,
        Some("https") => BackendProtocol::Https,
        _ => return Err(AuthError::Url(url.into())),
    };
    let authority = target
        .authority()
        .ok_or_else(|| AuthError::Url(url.into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(match protocol {
        BackendProtocol::Https => 443,
        _ => 80,
    });
    let resolved = tokio::time::timeout(
        policy.connect_timeout,
        shared.resolver.resolve(authority.host(), port),
    );
    let addr = resolved
        .await
        .ok()
        .flatten()
        .ok_or_else(|| AuthError::Resolve(authority.to_string()))?;
    let method = Method::from_bytes(auth.method.as_bytes()).unwrap_or(Method::GET);
    let path = target
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let request_uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = client.scheme;
    let access_scheme = client.access_scheme_str();
    let client = client.ip.to_string();
    let original_host = crate::proxy::request_authority(req).unwrap_or(host);
    let mut headers = req.headers.clone();
    strip_hop_by_hop(&mut headers, false);
    headers.remove(header::CONTENT_LENGTH);
    // ingress-nginx sets it empty: a client's claim must not reach the auth service.
    headers.remove("x-forwarded-proto");
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(&mut headers, "host", authority.as_str());
    set(
        &mut headers,
        "x-original-url",
        &format!("{scheme}://{original_host}{request_uri}"),
    );
    set(&mut headers, "x-original-uri", request_uri);
    set(&mut headers, "x-scheme", access_scheme);
    set(&mut headers, "x-original-method", req.method.as_str());
    set(&mut headers, "x-sent-from", "nginx-ingress-controller");
    set(&mut headers, "x-real-ip", &client);
    set(&mut headers, "x-forwarded-for", &client);
    set(
        &mut headers,
        "x-auth-request-redirect",
        auth.request_redirect.as_deref().unwrap_or(request_uri),
    );
    set(&mut headers, "x-request-id", request_id);
    // A kept-alive connection the auth service closed meanwhile: once more on a new one.
    for fresh in [false, true] {
        let (checkout, reused) = shared
            .pools
            .checkout(
                addr,
                protocol,
                policy.connect_timeout,
                policy.send_timeout,
                fresh,
                false,
            )
            .await?;
        let mut request = Request::new(UpstreamBody::Empty);
        *request.method_mut() = method.clone();
        *request.headers_mut() = headers.clone();
        *request.uri_mut() = path.parse().map_err(|_| AuthError::Url(url.into()))?;
        let progress = BodyProgress::default();
        let Ok((response, pooled)) = send(checkout, request, policy.read_timeout, &progress).await
        else {
            if reused && !fresh {
                continue;
            }
            return Err(AuthError::NoAnswer(addr));
        };
        let (head, body) = response.into_parts();
        // The head decides (nginx ignores the body); a body read whole lets the connection
        // serve again, one too large or too slow closes it.
        let body = http_body_util::Limited::new(body, MAX_AUTH_BODY);
        let read_timeout = policy.read_timeout;
        tokio::spawn(async move {
            let read = tokio::time::timeout(read_timeout, body.collect()).await;
            if let (Ok(Ok(_)), Some(pooled)) = (read, pooled) {
                pooled.release();
            }
        });
        return Ok((head.status, head.headers));
    }
    Err(AuthError::NoAnswer(addr))
}

/// Auth answers kept for `auth-cache-key`, by auth URL and key.
#[derive(Default)]
pub(crate) struct AnswerCache {
    answers: Mutex<HashMap<AnswerKey, (Instant, StatusCode, HeaderMap)>>,
}

/// The expanded auth URL and the expanded `auth-cache-key`.
type AnswerKey = (String, String);

/// Answers kept at most; past it, expired ones go, then all (a burst of distinct keys must
/// not grow memory without bound).
const MAX_ANSWERS: usize = 10_000;

impl AnswerCache {
    fn get(&self, key: &AnswerKey) -> Option<(StatusCode, HeaderMap)> {
        let answers = self.answers.lock().ok()?;
        let (until, status, headers) = answers.get(key)?;
        (Instant::now() < *until).then(|| (*status, headers.clone()))
    }

    fn put(&self, key: AnswerKey, (status, headers): (StatusCode, HeaderMap), ttl: Duration) {
        let Ok(mut answers) = self.answers.lock() else {
            return;
        };
        let now = Instant::now();
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, (until, _, _)| now < *until);
            if answers.len() >= MAX_ANSWERS {
                answers.clear();
            }
        }
        answers.insert(key, (now + ttl, status, headers));
    }
}

/// Host names of auth services resolved, kept for [`RESOLVED_FOR`] (nginx's `resolver
/// ... valid=30s`, as ingress-nginx configures it).
#[derive(Default)]
pub(crate) struct Resolver {
    cache: Mutex<HashMap<(String, u16), (Instant, SocketAddr)>>,
}

const RESOLVED_FOR: Duration = Duration::from_secs(30);

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse() {
            return Some(SocketAddr::new(ip, port));
        }
        let key = (host.to_ascii_lowercase(), port);
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, addr)) = cache.get(&key) {
                if at.elapsed() < RESOLVED_FOR {
                    return Some(*addr);
                }
            }
        }
        let addr = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (at, _)| at.elapsed() < RESOLVED_FOR);
            cache.insert(key, (Instant::now(), addr));
        }
        Some(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signin_gets_the_original_url_once() {
        assert_eq!(
            signin_location("https://a.example/start", "rd", "http://h/x"),
            "https://a.example/start?rd=http://h/x"
        );
        assert_eq!(
            signin_location("https://a.example/start?x=1", "rd", "http://h/x"),
            "https://a.example/start?x=1&rd=http://h/x"
        );
        assert_eq!(
            signin_location("https://a.example/start?rd=/home", "rd", "http://h/x"),
            "https://a.example/start?rd=/home"
        );
    }

    #[test]
    fn kept_answers_expire_and_stay_bounded() {
        let cache = AnswerCache::default();
        let key = |i: usize| (format!("http://auth/{i}"), String::new());
        let answer = || (StatusCode::OK, HeaderMap::new());
        cache.put(key(0), answer(), Duration::ZERO);
        assert!(cache.get(&key(0)).is_none(), "expired at once");
        cache.put(key(0), answer(), Duration::from_secs(60));
        assert_eq!(cache.get(&key(0)).map(|a| a.0), Some(StatusCode::OK));
        for i in 1..=MAX_ANSWERS {
            cache.put(key(i), answer(), Duration::from_secs(60));
        }
        let kept = cache.answers.lock().map(|a| a.len()).unwrap_or(0);
        assert!(kept <= MAX_ANSWERS, "{kept}");
    }

    #[test]
    fn escapes_everything_but_unreserved() {
        assert_eq!(
            escape("/a b/c?d=1&e=~_.-"),
            "%2Fa%20b%2Fc%3Fd%3D1%26e%3D~_.-"
        );
    }
}
