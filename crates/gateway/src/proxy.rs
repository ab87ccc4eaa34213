//! A request's life, in phases: [`route`], CORS preflights, [`admit`] (redirects,
//! allow/deny lists, limits, body size), credentials, [`choose_backend`] (canary, affinity),
//! [`forward`] (upstream attempts and retries), [`respond`] (response headers), and
//! completion (metrics, access log) when the last byte went out.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use rvs_model::ingress::{
    Backend, Balancing, CookieAffinity, Cors, HostMatch, PathMatch, RoutePolicy, RouteTarget,
    Template, TemplatePart, VirtualHost,
};

use crate::access_log::AccessEntry;
use crate::balancer;
use crate::body::{BodyProgress, ClientBody, Completion, ProxyBody, UpstreamBody};
use crate::external_auth::Verdict;
use crate::limits::{ConnectionSlot, Refusal};
use crate::metrics::{CacheKey, RequestLabels, RequestMetrics};
use crate::pool::{Checkout, ConnectError};
use crate::server::ClientConn;
use crate::{RoutingTable, Shared};

static HOST: HeaderName = HeaderName::from_static("host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
static X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What the request handler knows about the request once routed.
struct Routed {
    target: Arc<RouteTarget>,
    /// The matched path rule (for regex captures); None for a default backend.
    path: Option<PathMatch>,
    /// Identifies the virtual host in this snapshot (metrics cache key).
    server_name: usize,
    /// The host has TLS: plain requests are redirected.
    host_tls: bool,
    /// Routed by an exact host name (not a wildcard or the catch-all server): the request's
    /// host is then one an Ingress names.
    exact_host: bool,
    /// The path routing matched, when normalising changed it (regex captures use it).
    normalized_path: Option<String>,
}

/// The final outcome of the upstream attempts.
// Built once per request and moved, not stored: boxing the response would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Response {
        response: Response<Incoming>,
        connection: Option<crate::pool::PooledHttp1>,
        endpoint: SocketAddr,
    },
    Failed {
        status: StatusCode,
        endpoint: Option<SocketAddr>,
    },
}

/// Who sent a request and how it reached the first proxy: what the socket says or, with
/// `use-forwarded-headers`, what the load balancer in front says, as ingress-nginx reads it
/// (nginx's real_ip module over `X-Forwarded-For`: [`forwarded_client`];
/// `$pass_access_scheme`: `X-Forwarded-Proto`).
#[derive(Debug, Clone)]
pub(crate) struct ClientView {
    /// nginx's `$remote_addr`: allowlists, limits, `X-Real-IP`, the access log.
    pub ip: IpAddr,
    /// `$pass_access_scheme`: https redirects and the `X-Forwarded-Proto` family.
    pub access_scheme: HeaderValue,
    /// nginx's `$scheme`: the client connection's own.
    pub scheme: &'static str,
}

impl ClientView {
    pub(crate) fn of(
        headers: &HeaderMap,
        conn: &ClientConn,
        settings: &rvs_model::ingress::GlobalSettings,
    ) -> Self {
        let socket = ClientView {
            ip: canonical(conn.peer.ip()),
            access_scheme: HeaderValue::from_static(conn.scheme()),
            scheme: conn.scheme(),
        };
        if !settings.use_forwarded_headers {
            return socket;
        }
        let forwarded_ip = headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .and_then(forwarded_client);
        ClientView {
            ip: forwarded_ip.map_or(socket.ip, canonical),
            access_scheme: headers
                .get(&X_FORWARDED_PROTO)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or(socket.access_scheme),
            scheme: socket.scheme,
        }
    }

    /// The client's request arrived over plain HTTP (an https redirect applies).
    fn came_over_http(&self) -> bool {
        self.access_scheme == "http"
    }

    /// `$pass_access_scheme` as text (the connection's scheme if the header's is not).
    pub(crate) fn access_scheme_str(&self) -> &str {
        self.access_scheme.to_str().unwrap_or(self.scheme)
    }
}

/// The client an `X-Forwarded-For` list names, as nginx's real_ip module with every source
/// trusted and `real_ip_recursive on` reads it: from the right, each address replaces the
/// last until one does not parse (`unknown`), so the leftmost of the well-formed tail.
/// Entries may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) or brackets.
pub(crate) fn forwarded_client(list: &str) -> Option<IpAddr> {
    let mut client = None;
    // Empty entries (`a,,b`, a trailing comma) are separators to nginx, not addresses.
    for entry in list.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
            .or_else(|| {
                let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
                inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
            });
        match parsed {
            Some(ip) => client = Some(ip),
            None => break,
        }
    }
    client
}

/// Timing and identity of a request, for its completion.
struct RequestInfo {
    start: Instant,
    time: SystemTime,
    client: ClientView,
    method: Method,
    host: String,
    uri: Uri,
    protocol: &'static str,
    request_id: String,
    request_length: Arc<BodyProgress>,
    head_length: u64,
}

/// The request handler hyper calls. Its future is boxed: hyper keeps one slot per connection
/// for it, alive while the connection idles, so a small one keeps idle connections small.
pub fn handle(
    req: Request<Incoming>,
    conn: Arc<ClientConn>,
    shared: Arc<Shared>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
> {
    Box::pin(handle_request(req, conn, shared))
}

async fn handle_request(
    mut req: Request<Incoming>,
    conn: Arc<ClientConn>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let table = shared.table.load_full();
    conn.in_flight.fetch_add(1, Ordering::AcqRel);
    let served = conn
        .requests
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(1);
    let settings = table.snapshot.settings.clone();
    // Taken before the request is split: the client side of a WebSocket or other upgrade.
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let version = parts.version;
    let host = request_host(&parts);
    let info = RequestInfo {
        start: Instant::now(),
        time: SystemTime::now(),
        client: ClientView::of(&parts.headers, &conn, &settings),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        protocol: protocol_name(parts.version),
        request_id: request_id(&parts, settings.generate_request_id),
        request_length: Arc::new(BodyProgress::default()),
        head_length: head_length(&parts),
        host,
    };
    let path = match crate::path::normalize(parts.uri.path()) {
        Ok(path) => path,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, "bad request path ({e:?})");
            let done = Done::new(&shared, &conn, info, None, &table);
            let response = error_response(StatusCode::BAD_REQUEST, is_grpc(&parts.headers));
            return Ok(finish(response, done));
        }
    };
    // Routed by the normalised path (nginx's `$uri`); sent upstream as the client wrote it.
    let routed = route(&table, &info.host, &path).map(|mut r| {
        if let std::borrow::Cow::Owned(normalized) = path {
            r.normalized_path = Some(normalized);
        }
        r
    });
    let done = Done::new(&shared, &conn, info, routed.as_ref(), &table);
    if conn.conflicting_framing.swap(false, Ordering::AcqRel) {
        // Request smuggling: both Content-Length and Transfer-Encoding (RFC 9112 6.3).
        let mut response = finish(error_response(StatusCode::BAD_REQUEST, false), done);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    let mut response = match routed {
        None => finish(
            error_response(StatusCode::NOT_FOUND, is_grpc(&parts.headers)),
            done,
        ),
        Some(routed) => {
            // Looked at only on routes with CORS on: nothing to pay on the others.
            let cors = routed.target.policy.cors.as_ref().and_then(|cors| {
                let origin = parts
                    .headers
                    .get(header::ORIGIN)
                    .and_then(|v| v.to_str().ok());
                Some((cors.clone(), cors.allowed_origin(origin)?.to_string()))
            });
            match cors {
                // A preflight is answered here, before redirects, allow lists and limits
                // (ingress-nginx's `return 204` runs in nginx's rewrite phase, before those).
                Some((cors, allowed)) if parts.method == Method::OPTIONS => {
                    let mut response = Response::new(ProxyBody::empty());
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    set_cors_headers(response.headers_mut(), &cors, &allowed, true);
                    finish(response, done)
                }
                cors => {
                    let request = ClientRequest {
                        parts,
                        body,
                        upgrade: client_upgrade,
                    };
                    let mut response = proxy(request, routed, &conn, &shared, &table, done).await;
                    if let Some((cors, allowed)) = cors {
                        set_cors_headers(response.headers_mut(), &cors, &allowed, false);
                    }
                    response
                }
            }
        }
    };
    if let Some(hsts) = table.hsts.as_ref().filter(|_| conn.tls) {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    Ok(close_if_due(response, &settings, served, &conn, version))
}

/// The client's request, split: the head is read by every phase, the body goes upstream
/// once.
struct ClientRequest {
    parts: http::request::Parts,
    body: Incoming,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Phase 1: the virtual host and route for the request.
fn route(table: &RoutingTable, host: &str, path: &str) -> Option<Routed> {
    let vh: &VirtualHost = table.snapshot.virtual_host(host);
    let (path_rule, target) = vh.route_with_path(path)?;
    Some(Routed {
        target: target.clone(),
        path: path_rule.cloned(),
        server_name: vh as *const VirtualHost as usize,
        host_tls: vh.tls,
        exact_host: matches!(vh.host.get(), HostMatch::Exact(_)),
        normalized_path: None,
    })
}

async fn proxy(
    request: ClientRequest,
    routed: Routed,
    conn: &Arc<ClientConn>,
    shared: &Arc<Shared>,
    table: &Arc<RoutingTable>,
    mut done: Done,
) -> Response<ProxyBody> {
    let ClientRequest {
        parts,
        body,
        upgrade,
    } = request;
    let target = routed.target.clone();
    let grpc = is_grpc(&parts.headers);
    let settings = &table.snapshot.settings;
    // Phase 2: admission, then credentials (after the limits, so a flood of bad passwords
    // is limited before any hash is computed; checking is async: slow hashes run off the
    // event loop).
    done.slot = match admit(&parts, &routed, &done.info.client, shared, settings) {
        Ok(slot) => slot,
        Err(response) => return finish(response, done),
    };
    if let Some(auth) = &target.policy.basic_auth {
        if !crate::auth::allows(auth, parts.headers.get(header::AUTHORIZATION)).await {
            return finish(unauthorized(&auth.realm, grpc), done);
        }
    }
    let mut auth_headers = Vec::new();
    let mut auth_cookies = Vec::new();
    if let Some(auth) = &target.policy.external_auth {
        let verdict = crate::external_auth::check(crate::external_auth::AuthCheck {
            auth,
            req: &parts,
            client: &done.info.client,
            shared,
            policy: &target.policy,
            host: &done.info.host,
            request_id: &done.info.request_id,
            exact_host: routed.exact_host,
        });
        match Box::pin(verdict).await {
            Verdict::Allow { headers, cookies } => {
                auth_headers = headers;
                auth_cookies = cookies;
            }
            Verdict::Deny(response) => return finish(response, done),
        }
    }
    // Phase 3: backend and policy.
    let (backend, policy, canary) = choose_backend(&parts, &target);
    done.canary = canary.then(|| backend.clone());
    let affinity = target.policy.affinity.as_ref();
    let pinned = affinity.and_then(|a| {
        let cookies = parts.headers.get(header::COOKIE)?.to_str().ok()?;
        let value = balancer::cookie(cookies, &a.name)?;
        balancer::affinity_endpoint(&backend.endpoints, value)
    });
    let request_id = done.info.request_id.clone();
    let host = done.info.host.clone();
    let client = done.info.client.clone();
    let make_head = || {
        let mut head = upstream_request(
            &parts,
            &routed,
            (conn, &client),
            &policy,
            (&request_id, &host),
            settings,
        )?;
        if let Some(auth) = &target.policy.external_auth {
            // The client's own copies never pass, whether or not the auth service set one
            // (as nginx's proxy_set_header with an empty value drops them).
            for name in &auth.response_headers {
                head.headers.remove(name.as_str());
            }
        }
        for (name, value) in &auth_headers {
            head.headers.append(name.clone(), value.clone());
        }
        Ok(head)
    };
    let state = table
        .backends
        .get(&backend.service)
        .cloned()
        .unwrap_or_default();
    // Phase 4: upstream attempts.
    let hash_key = match &policy.balancing {
        Balancing::Hash(key) => Some(expand(key, &parts, &done.info.client, &done.info.host)),
        _ => None,
    };
    let attempt = Attempt {
        backend: &backend,
        policy: &policy,
        state: &state,
        pinned,
        hash_key: hash_key.as_deref(),
        client_body_timeout: settings.client_body_timeout,
        upgrade: upgrade.is_some(),
    };
    // Boxed: an idle keep-alive connection keeps its handler's future allocation, so the
    // large upstream state machine (connect, TLS, send) must not live inline in it.
    let outcome = Box::pin(forward(
        &parts.method,
        &make_head,
        body,
        attempt,
        shared,
        &mut done,
    ))
    .await;
    // Phase 5: the response.
    match outcome {
        Outcome::Failed { status, endpoint } => {
            done.upstream = endpoint;
            // The client's fault, not the backend's.
            let progress = &done.info.request_length;
            let status = if progress.too_large.load(Ordering::Relaxed) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else if progress.client_timed_out.load(Ordering::Relaxed) {
                StatusCode::REQUEST_TIMEOUT
            } else {
                status
            };
            finish(error_response(status, grpc), done)
        }
        Outcome::Response {
            mut response,
            connection,
            endpoint,
        } => {
            done.upstream = Some(endpoint);
            done.upstream_status = Some(response.status().as_u16());
            let status = response.status();
            let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
            if upgraded {
                if let Some(client) = upgrade {
                    tunnel_upgrade(client, &mut response, conn, policy.read_timeout);
                }
            }
            let set_cookie = affinity
                .filter(|_| pinned != Some(endpoint))
                .and_then(|a| affinity_cookie(a, endpoint, &target));
            let (mut head, body) = response.into_parts();
            strip_hop_by_hop(&mut head.headers, upgraded);
            if let Some(cookie) = set_cookie {
                head.headers.append(header::SET_COOKIE, cookie);
            }
            // The auth service's cookies (oauth2-proxy refreshing its session), as
            // ingress-nginx's `add_header Set-Cookie $auth_cookie`.
            for cookie in auth_cookies {
                head.headers.append(header::SET_COOKIE, cookie);
            }
            done.status = status.as_u16();
            let body = ProxyBody::upstream(body, policy.read_timeout, connection);
            Response::from_parts(head, body.with_completion(Box::new(done)))
        }
    }
}

/// Phase 2: redirects, allow and deny lists, limits, body size. A refusal is the response.
#[allow(clippy::result_large_err)]
fn admit(
    req: &http::request::Parts,
    routed: &Routed,
    client: &ClientView,
    shared: &Shared,
    settings: &rvs_model::ingress::GlobalSettings,
) -> Result<Option<ConnectionSlot>, Response<ProxyBody>> {
    let target = &routed.target;
    let policy = &target.policy;
    let grpc = is_grpc(&req.headers);
    if let Some(to) = &policy.redirect {
        let location = expand(&to.location, req, client, &request_host(req));
        let status = StatusCode::from_u16(to.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        return Err(redirect(status, &location));
    }
    if client.came_over_http()
        && (policy.force_ssl_redirect || (policy.ssl_redirect && routed.host_tls))
        && !settings.never_redirected(&target.path)
    {
        return Err(redirect(
            StatusCode::PERMANENT_REDIRECT,
            &https_location(req),
        ));
    }
    if let Some(root) = &policy.app_root {
        if req.uri.path() == "/" {
            return Err(redirect(StatusCode::FOUND, root));
        }
    }
    let client = client.ip;
    if (!policy.allowlist.is_empty() && !policy.allowlist.iter().any(|n| n.contains(&client)))
        || policy.denylist.iter().any(|n| n.contains(&client))
    {
        return Err(error_response(StatusCode::FORBIDDEN, grpc));
    }
    let slot = match shared
        .limits
        .admit(&target.ingress, client, &policy.limits, Instant::now())
    {
        Ok(slot) => slot,
        Err(Refusal::Rate) => return Err(error_response(status(settings.limit_req_status), grpc)),
        Err(Refusal::Connections) => {
            return Err(error_response(status(settings.limit_conn_status), grpc))
        }
    };
    if let (Some(limit), Some(length)) = (policy.body_size_limit, content_length(&req.headers)) {
        if length > limit {
            return Err(error_response(StatusCode::PAYLOAD_TOO_LARGE, grpc));
        }
    }
    Ok(slot)
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// IPv4-mapped IPv6 clients (dual-stack listeners) are matched as IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Phase 3: the canary takes the request by header, then cookie, then weight
/// (ingress-nginx's precedence); `never` in a header or cookie keeps it on the main backend.
fn choose_backend(
    req: &http::request::Parts,
    target: &RouteTarget,
) -> (Arc<Backend>, Arc<RoutePolicy>, bool) {
    let main = (target.backend.clone(), target.policy.clone(), false);
    let Some(canary) = &target.canary else {
        return main;
    };
    if canary.backend.endpoints.is_empty() {
        return main;
    }
    // As ingress-nginx: a canary Ingress contributes its backend; every other setting is the
    // main Ingress's.
    let to_canary = (canary.backend.clone(), target.policy.clone(), true);
    let rule = &canary.rule;
    if let Some(name) = &rule.by_header {
        if let Some(value) = req.headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
            match &rule.header_value {
                Some(expected) if value == expected => return to_canary,
                Some(_) => {}
                None if value == "always" => return to_canary,
                None if value == "never" => return main,
                None => {}
            }
        }
    }
    if let Some(name) = &rule.by_cookie {
        let cookie = req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| balancer::cookie(h, name));
        match cookie {
            Some("always") => return to_canary,
            Some("never") => return main,
            _ => {}
        }
    }
    if rule.weight > 0 && rand::random_range(0..rule.weight_total.max(1)) < rule.weight {
        return to_canary;
    }
    main
}

/// The request head as sent upstream (without body).
struct UpstreamHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

fn upstream_request(
    req: &http::request::Parts,
    routed: &Routed,
    (conn, client): (&ClientConn, &ClientView),
    policy: &RoutePolicy,
    (request_id, request_host): (&str, &str),
    settings: &rvs_model::ingress::GlobalSettings,
) -> Result<UpstreamHead, StatusCode> {
    let mut headers = req.headers.clone();
    let upgrade = is_upgrade_head(&req.version, &req.headers);
    strip_hop_by_hop(&mut headers, upgrade);
    let original_host = request_authority(req).unwrap_or(request_host);
    let host = policy.upstream_vhost.as_deref().unwrap_or(original_host);
    let scheme = client.access_scheme.clone();
    let client_ip = client.ip.to_string();
    let trusted = settings.use_forwarded_headers;
    // ingress-nginx: `$remote_addr` (what real_ip made of the list, when trusted), or with
    // compute-full-forwarded-for the list with the socket's peer appended.
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) if trusted && settings.compute_full_forwarded_for => {
            HeaderValue::from_str(&format!("{previous}, {}", canonical(conn.peer.ip()))).ok()
        }
        _ => HeaderValue::from_str(&client_ip).ok(),
    };
    let set = |headers: &mut HeaderMap, name: &HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), v);
        }
    };
    // No ID (none sent, generate-request-id off): no header, as nginx sends none for an
    // empty value.
    if !request_id.is_empty() {
        set(&mut headers, &X_REQUEST_ID, request_id);
    }
    set(&mut headers, &X_REAL_IP, &client_ip);
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        set(&mut headers, &X_FORWARDED_HOST, original_host);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PORT)) {
        headers.insert(
            X_FORWARDED_PORT.clone(),
            HeaderValue::from(conn.local.port()),
        );
    }
    headers.insert(X_FORWARDED_PROTO.clone(), scheme.clone());
    headers.insert(X_FORWARDED_SCHEME.clone(), scheme.clone());
    headers.insert(X_SCHEME.clone(), scheme);
    if let Some(prefix) = &policy.forwarded_prefix {
        set(&mut headers, &X_FORWARDED_PREFIX, prefix);
    }
    let http2 = policy.backend_protocol.is_http2();
    let rewriting = policy.rewrite_target.is_some() && routed.path.is_some();
    let uri = if http2 {
        headers.remove(header::HOST);
        let scheme = if policy.backend_protocol.is_tls() {
            "https"
        } else {
            "http"
        };
        let path_and_query = upstream_target(req, routed, policy);
        Uri::try_from(format!("{scheme}://{host}{path_and_query}"))
            .map_err(|_| StatusCode::BAD_REQUEST)?
    } else {
        set(&mut headers, &HOST, host);
        match (rewriting, req.uri.path_and_query()) {
            // The common case: the target as the client sent it (cheap to clone).
            (false, Some(pq)) if req.uri.scheme().is_none() => Uri::from(pq.clone()),
            _ => Uri::try_from(upstream_target(req, routed, policy))
                .map_err(|_| StatusCode::BAD_REQUEST)?,
        }
    };
    Ok(UpstreamHead {
        method: req.method.clone(),
        uri,
        version: if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        },
        headers,
    })
}

/// The path and query sent upstream: rewritten by `rewrite-target`, else the client's.
fn upstream_target(req: &http::request::Parts, routed: &Routed, policy: &RoutePolicy) -> String {
    let request_path = routed.normalized_path.as_deref().unwrap_or(req.uri.path());
    rewrite(
        &req.uri,
        request_path,
        routed.path.as_ref(),
        policy.rewrite_target.as_deref(),
    )
}

/// `rewrite-target` with the path regex's captures (`$1`), keeping the query string.
fn rewrite(
    uri: &Uri,
    request_path: &str,
    path: Option<&PathMatch>,
    target: Option<&str>,
) -> String {
    let original = uri.path_and_query().map_or("/", |p| p.as_str());
    let (Some(target), Some(path_rule)) = (target, path) else {
        return original.to_string();
    };
    let mut rewritten = String::new();
    match path_rule {
        PathMatch::Regex(r) => match r.regex.captures(request_path) {
            Some(captures) => captures.expand(target, &mut rewritten),
            None => rewritten.push_str(target),
        },
        _ => rewritten.push_str(target),
    }
    if !rewritten.starts_with('/') {
        rewritten.insert(0, '/');
    }
    if let Some(query) = uri.query() {
        rewritten.push(if rewritten.contains('?') { '&' } else { '?' });
        rewritten.push_str(query);
    }
    rewritten
}

/// Why one attempt failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AttemptError {
    Connect,
    /// No connection within `proxy-connect-timeout`: nothing was sent.
    ConnectTimeout,
    Timeout,
    /// Sent (or partly sent), then the connection failed.
    Send,
    Status(u16),
}

/// The response time an EWMA endpoint is charged for a failed attempt.
const EWMA_FAILURE: Duration = Duration::from_secs(1);

/// `upstream-hash-by`: the key's value for this request, from its nginx variables.
/// `template` filled in for this request, as nginx would its variables.
pub(crate) fn expand(
    template: &Template,
    req: &http::request::Parts,
    client: &ClientView,
    host: &str,
) -> String {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::RequestUri => {
                out.push_str(req.uri.path_and_query().map_or("/", |p| p.as_str()))
            }
            TemplatePart::EscapedRequestUri => out.push_str(&crate::external_auth::escape(
                req.uri.path_and_query().map_or("/", |p| p.as_str()),
            )),
            TemplatePart::Uri => out.push_str(req.uri.path()),
            TemplatePart::Args => out.push_str(req.uri.query().unwrap_or("")),
            TemplatePart::Host => out.push_str(host),
            TemplatePart::RemoteAddr => out.push_str(&client.ip.to_string()),
            TemplatePart::Scheme => out.push_str(client.scheme),
            TemplatePart::Method => out.push_str(req.method.as_str()),
            TemplatePart::Header(name) => {
                if let Some(v) = req.headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                    out.push_str(v);
                }
            }
            TemplatePart::Cookie(name) => {
                let value = req
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|h| balancer::cookie(h, name));
                out.push_str(value.unwrap_or(""));
            }
            TemplatePart::Arg(name) => {
                let value = req.uri.query().and_then(|q| {
                    q.split('&')
                        .find_map(|pair| pair.strip_prefix(name.as_str())?.strip_prefix('='))
                });
                out.push_str(value.unwrap_or(""));
            }
        }
    }
    out
}

/// When an upstream attempt began and how long its connect took: the served attempt's go to
/// the metrics and the access log.
#[derive(Clone, Copy)]
struct AttemptTiming {
    start: Instant,
    connect: Duration,
}

impl AttemptTiming {
    fn record(self, done: &mut Done) {
        done.connect_time = Some(self.connect);
        done.upstream_start = Some(self.start);
    }
}

/// What an attempt needs besides the request.
struct Attempt<'a> {
    backend: &'a Backend,
    policy: &'a RoutePolicy,
    state: &'a crate::BackendState,
    /// The endpoint the affinity cookie names, tried first.
    pinned: Option<SocketAddr>,
    /// `upstream-hash-by`'s key for this request.
    hash_key: Option<&'a str>,
    client_body_timeout: Duration,
    /// The client asked for an upgrade (WebSocket...): the connection may become a tunnel.
    upgrade: bool,
}

/// Phase 4: attempts on endpoints until one answers, retrying as `proxy-next-upstream` says:
/// never on an endpoint already tried, never a non-idempotent method unless allowed, never
/// once the request body was streamed.
async fn forward(
    method: &Method,
    make_head: &(dyn Fn() -> Result<UpstreamHead, StatusCode> + Sync),
    body: Incoming,
    attempt: Attempt<'_>,
    shared: &Shared,
    done: &mut Done,
) -> Outcome {
    let Attempt {
        backend,
        policy,
        state,
        pinned,
        hash_key,
        client_body_timeout,
        upgrade,
    } = attempt;
    let next = &policy.next_upstream;
    let endpoints = &backend.endpoints;
    if endpoints.is_empty() {
        return Outcome::Failed {
            status: StatusCode::SERVICE_UNAVAILABLE,
            endpoint: None,
        };
    }
    let max_tries = match next.tries {
        0 => endpoints.len(),
        n => (n as usize).min(endpoints.len()),
    };
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let method_retryable = idempotent || next.non_idempotent;
    let deadline = next.timeout_total.map(|t| done.info.start + t);
    let progress = done.info.request_length.clone();
    // The client's body until an attempt takes it; None for a request without one.
    let mut body = (!body.is_end_stream()).then(|| {
        Box::new(ClientBody::new(
            body,
            policy.body_size_limit,
            client_body_timeout,
            progress.clone(),
        ))
    });
    let has_body = body.is_some();
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(max_tries);
    // A kept-alive connection the backend closed meanwhile (its keep-alive timeout shorter
    // than ours, e.g. Node's 5 s) fails a request that never got there: it is tried once
    // more on a new connection to the same endpoint, without counting as a try (nginx does
    // the same for its cached connections).
    let mut stale_retry = true;
    let mut fresh = false;
    // An EWMA pick waiting for its response time.
    let mut ewma_open: Option<SocketAddr> = None;
    let mut last = (AttemptError::Connect, None);
    // A response kept for want of a better one, with its attempt's timing.
    let mut kept: Option<(Outcome, AttemptTiming)> = None;
    let mut last_timing = None;
    while tried.len() < max_tries || fresh {
        let pick = if fresh {
            // The same endpoint again, on a new connection.
            tried.pop()
        } else {
            match pinned.filter(|p| tried.is_empty() && endpoints.contains(p)) {
                Some(p) => Some(p),
                None => match &policy.balancing {
                    Balancing::RoundRobin => balancer::round_robin(endpoints, state, &tried),
                    Balancing::Ewma => {
                        let pick = balancer::ewma_pick(endpoints, state, &tried);
                        ewma_open = pick;
                        pick
                    }
                    Balancing::Hash(_) => {
                        balancer::rendezvous(endpoints, hash_key.unwrap_or(""), &tried)
                    }
                },
            }
        };
        let Some(endpoint) = pick else { break };
        tried.push(endpoint);
        let connect_start = Instant::now();
        let checkout = shared
            .pools
            .checkout(
                endpoint,
                policy.backend_protocol,
                policy.connect_timeout,
                policy.send_timeout,
                std::mem::take(&mut fresh),
                upgrade,
            )
            .await;
        let timing = AttemptTiming {
            start: connect_start,
            connect: connect_start.elapsed(),
        };
        last_timing = Some(timing);
        let error = match checkout {
            Err(e) => {
                if let Some(ep) = ewma_open.take() {
                    balancer::ewma_done(state, ep, EWMA_FAILURE);
                }
                tracing::debug!(%endpoint, "upstream connect failed: {e}");
                match e {
                    ConnectError::Timeout(_) => AttemptError::ConnectTimeout,
                    _ => AttemptError::Connect,
                }
            }
            Ok((checkout, reused)) => {
                let upstream_body = match body.take() {
                    Some(client) => UpstreamBody::Client(client),
                    None => UpstreamBody::Empty,
                };
                // Made anew per attempt: cheaper than keeping a copy for a rare retry.
                let head = match make_head() {
                    Ok(head) => head,
                    Err(status) => {
                        return Outcome::Failed {
                            status,
                            endpoint: None,
                        }
                    }
                };
                let request = build(head, upstream_body);
                let sent = send(checkout, request, policy.read_timeout, &progress).await;
                if let Some(ep) = ewma_open.take() {
                    // A failure counts as slow, so the next picks go elsewhere for a while;
                    // not one the client caused (a stalled or oversized body).
                    let took = connect_start.elapsed();
                    let clients_fault = progress.client_timed_out.load(Ordering::Relaxed)
                        || progress.too_large.load(Ordering::Relaxed);
                    let sample = if sent.is_ok() || clients_fault {
                        took
                    } else {
                        took.max(EWMA_FAILURE)
                    };
                    balancer::ewma_done(state, ep, sample);
                }
                match sent {
                    Ok((response, connection)) => {
                        let status = response.status().as_u16();
                        let may_retry = next.retries_status(status)
                            && method_retryable
                            && !has_body
                            && tried.len() < max_tries
                            && deadline.is_none_or(|d| Instant::now() < d);
                        let outcome = Outcome::Response {
                            response,
                            connection,
                            endpoint,
                        };
                        if !may_retry {
                            timing.record(done);
                            return outcome;
                        }
                        // Served if no other endpoint does better.
                        kept = Some((outcome, timing));
                        AttemptError::Status(status)
                    }
                    Err((error, unsent)) => {
                        let returned = unsent.is_some();
                        if let Some(UpstreamBody::Client(client)) = unsent {
                            // The connection never took it: the next attempt sends it.
                            body = Some(client);
                        }
                        let replayable = returned || (!has_body && method_retryable);
                        if error == AttemptError::Send && reused && stale_retry && replayable {
                            stale_retry = false;
                            fresh = true;
                            continue;
                        }
                        error
                    }
                }
            }
        };
        last = (error, Some(endpoint));
        let allowed = match error {
            AttemptError::Connect => next.error,
            // Nothing was sent: any method may go to the next endpoint (as nginx does).
            AttemptError::ConnectTimeout => next.timeout,
            AttemptError::Timeout => next.timeout && method_retryable,
            AttemptError::Send => next.error && method_retryable,
            AttemptError::Status(_) => true,
        };
        let body_gone = has_body && body.is_none();
        let in_time = deadline.is_none_or(|d| Instant::now() < d);
        if !allowed || body_gone || !in_time {
            break;
        }
    }
    if let Some((outcome, timing)) = kept {
        timing.record(done);
        return outcome;
    }
    if let Some(timing) = last_timing {
        timing.record(done);
    }
    let status = match last.0 {
        AttemptError::Timeout | AttemptError::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    Outcome::Failed {
        status,
        endpoint: last.1,
    }
}

/// The request for one attempt.
fn build(head: UpstreamHead, body: UpstreamBody) -> Request<UpstreamBody> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    request
}

pub(crate) type SendResult = Result<
    (Response<Incoming>, Option<crate::pool::PooledHttp1>),
    (AttemptError, Option<UpstreamBody>),
>;

/// Sends one request on a checked-out connection and waits up to `read_timeout` for the
/// response head. A request the connection never took comes back with the error.
pub(crate) async fn send(
    checkout: Checkout,
    request: Request<UpstreamBody>,
    read_timeout: Duration,
    upload: &BodyProgress,
) -> SendResult {
    match checkout {
        Checkout::Http1(mut pooled) => {
            let sent = until_response(read_timeout, upload, pooled.try_send_request(request));
            match sent.await {
                Ok(Ok(response)) => Ok((response, Some(pooled))),
                Ok(Err(mut e)) => {
                    let unsent = e.take_message().map(|r| r.into_body());
                    tracing::debug!("upstream request failed: {}", e.error());
                    Err((AttemptError::Send, unsent))
                }
                Err(_) => Err((AttemptError::Timeout, None)),
            }
        }
        Checkout::Http2(mut sender) => {
            let sent = until_response(read_timeout, upload, sender.try_send_request(request));
            match sent.await {
                Ok(Ok(response)) => Ok((response, None)),
                Ok(Err(mut e)) => {
                    let unsent = e.take_message().map(|r| r.into_body());
                    tracing::debug!("upstream h2 request failed: {}", e.error());
                    Err((AttemptError::Send, unsent))
                }
                Err(_) => Err((AttemptError::Timeout, None)),
            }
        }
    }
}

/// Waits for the response head: `proxy-read-timeout` counts from the last request body
/// bytes sent, not from the start, so a long upload is not cut (nginx times the read only
/// once the request went out).
async fn until_response<F: std::future::Future>(
    read_timeout: Duration,
    upload: &BodyProgress,
    response: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::pin!(response);
    let mut sent = upload.bytes.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(read_timeout, &mut response).await {
            Ok(output) => return Ok(output),
            Err(elapsed) => {
                let now = upload.bytes.load(Ordering::Relaxed);
                if now == sent {
                    return Err(elapsed);
                }
                sent = now;
            }
        }
    }
}

/// WebSocket and other upgrades: once the upstream said 101, the two connections are joined
/// byte for byte.
fn tunnel_upgrade(
    client: hyper::upgrade::OnUpgrade,
    response: &mut Response<Incoming>,
    conn: &Arc<ClientConn>,
    idle_timeout: Duration,
) {
    let upstream = hyper::upgrade::on(response);
    // The tunnel counts as a request in flight, so the client connection's keep-alive timer
    // does not cut a quiet WebSocket; `proxy-read-timeout` of silence both ways ends it.
    conn.in_flight.fetch_add(1, Ordering::AcqRel);
    let conn = conn.clone();
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let client = TokioIo::new(client);
                let upstream = TokioIo::new(upstream);
                if let Err(e) = crate::tunnel::join(client, upstream, idle_timeout).await {
                    tracing::debug!("upgraded connection ended: {e}");
                }
            }
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    });
}

fn affinity_cookie(
    affinity: &CookieAffinity,
    endpoint: SocketAddr,
    target: &RouteTarget,
) -> Option<HeaderValue> {
    let path = affinity.path.clone().unwrap_or_else(|| {
        if target.path.starts_with('/')
            && !target.path.contains(['(', '[', '*', '+', '?', '$', '^'])
        {
            target.path.clone()
        } else {
            "/".into()
        }
    });
    let mut cookie = format!(
        "{}={}; Path={}; HttpOnly",
        affinity.name,
        balancer::affinity_value(endpoint),
        path
    );
    if let Some(max_age) = affinity.max_age {
        cookie.push_str(&format!("; Max-Age={max_age}"));
    }
    if affinity.secure {
        cookie.push_str("; Secure");
    }
    if let Some(same_site) = &affinity.same_site {
        cookie.push_str(&format!("; SameSite={same_site}"));
    }
    HeaderValue::from_str(&cookie).ok()
}

/// Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TRAILER);
    if te_trailers {
        // gRPC needs it end to end.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    is_upgrade_head(&req.version(), req.headers())
}

fn is_upgrade_head(version: &Version, headers: &HeaderMap) -> bool {
    *version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The request's host, lowercase, without port. HTTP/1.1: an absolute-form target's host
/// wins over `Host` (RFC 9112 3.2.2); HTTP/2: `Host` if sent, else `:authority`, as nginx
/// reads them.
fn request_host(req: &http::request::Parts) -> String {
    strip_port(request_authority(req).unwrap_or("")).to_ascii_lowercase()
}

/// The host and port the request is for, as sent (see [`request_host`]): routing, the
/// upstream `Host`, `X-Forwarded-Host` and redirects all use this one.
pub(crate) fn request_authority(req: &http::request::Parts) -> Option<&str> {
    let header = req.headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = req.uri.authority().map(|a| a.as_str());
    if req.version == Version::HTTP_2 {
        header.or(authority)
    } else {
        authority.or(header)
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn https_location(req: &http::request::Parts) -> String {
    let host = request_authority(req)
        .map(strip_port)
        .map(str::to_string)
        .unwrap_or_default();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("https://{host}{path}")
}

fn request_id(req: &http::request::Parts, generate: bool) -> String {
    if let Some(id) = req.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        return id.to_string();
    }
    if !generate {
        return String::new();
    }
    format!("{:032x}", rand::random::<u128>())
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn head_length(req: &http::request::Parts) -> u64 {
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    let headers: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (line + headers + 2) as u64
}

/// ingress-nginx's CORS headers, set on every response of the route for an allowed origin
/// (`more_set_headers`: they replace the backend's own). An echoed origin varies by request,
/// so caches are told (`Vary: Origin`).
fn set_cors_headers(headers: &mut HeaderMap, cors: &Cors, allowed: &str, preflight: bool) {
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    if cors.allow_credentials {
        set(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    set(header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods);
    set(header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers);
    if let Some(expose) = &cors.expose_headers {
        set(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
    }
    set(header::ACCESS_CONTROL_MAX_AGE, &cors.max_age.to_string());
    if preflight {
        set(header::CONTENT_TYPE, "text/plain charset=UTF-8");
    }
    if allowed != "*" {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// nginx's `auth_basic` refusal: 401 with the realm to ask the user for.
fn unauthorized(realm: &str, grpc: bool) -> Response<ProxyBody> {
    let mut response = error_response(StatusCode::UNAUTHORIZED, grpc);
    if let Ok(challenge) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = html_page(status);
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The small HTML page nginx answers errors and redirects with.
fn html_page(status: StatusCode) -> Response<ProxyBody> {
    let body = format!(
        "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n<hr><center>rvs</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

/// An error as nginx writes it, or as a gRPC status for gRPC clients (trailers-only
/// response), which read no HTML.
pub fn error_response(status: StatusCode, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        let (code, message) = match status {
            StatusCode::GATEWAY_TIMEOUT => ("4", "upstream timed out"),
            StatusCode::NOT_FOUND => ("12", "no route"),
            StatusCode::FORBIDDEN => ("7", "forbidden"),
            StatusCode::UNAUTHORIZED => ("16", "unauthenticated"),
            StatusCode::TOO_MANY_REQUESTS => ("8", "rate limited"),
            StatusCode::PAYLOAD_TOO_LARGE => ("8", "request too large"),
            _ => ("14", "upstream unavailable"),
        };
        let mut response = Response::new(ProxyBody::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static(code));
        headers.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(message));
        return response;
    }
    html_page(status)
}

fn finish(response: Response<ProxyBody>, mut done: Done) -> Response<ProxyBody> {
    done.status = response.status().as_u16();
    response.map(|b| b.with_completion(Box::new(done)))
}

/// `keep-alive-requests`: the last request a connection may carry is answered with
/// `Connection: close` (HTTP/1.1), or its connection is retired with GOAWAY (HTTP/2).
fn close_if_due(
    mut response: Response<ProxyBody>,
    settings: &rvs_model::ingress::GlobalSettings,
    served: u32,
    conn: &ClientConn,
    version: Version,
) -> Response<ProxyBody> {
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if !upgraded && settings.keep_alive_requests > 0 && served >= settings.keep_alive_requests {
        if version == Version::HTTP_2 {
            conn.retire.notify_one();
        } else {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

fn method_index(method: &Method) -> (u8, &'static str) {
    match *method {
        Method::GET => (0, "GET"),
        Method::POST => (1, "POST"),
        Method::PUT => (2, "PUT"),
        Method::DELETE => (3, "DELETE"),
        Method::HEAD => (4, "HEAD"),
        Method::OPTIONS => (5, "OPTIONS"),
        Method::PATCH => (6, "PATCH"),
        Method::CONNECT => (7, "CONNECT"),
        Method::TRACE => (8, "TRACE"),
        // Arbitrary methods would make the label set unbounded.
        _ => (9, "OTHER"),
    }
}

/// A request's completion: metrics and access log once the response is done.
struct Done {
    shared: Arc<Shared>,
    conn: Arc<ClientConn>,
    info: RequestInfo,
    table: Arc<RoutingTable>,
    target: Option<Arc<RouteTarget>>,
    server_name: usize,
    status: u16,
    /// The canary's backend when the canary took the request.
    canary: Option<Arc<Backend>>,
    upstream: Option<SocketAddr>,
    upstream_status: Option<u16>,
    /// When the last upstream attempt began: nginx's `$upstream_response_time` runs from
    /// there (its connect) to the response's last byte.
    upstream_start: Option<Instant>,
    connect_time: Option<Duration>,
    slot: Option<ConnectionSlot>,
    /// [`Completion::complete`] ran.
    completed: bool,
}

impl Done {
    fn new(
        shared: &Arc<Shared>,
        conn: &Arc<ClientConn>,
        info: RequestInfo,
        routed: Option<&Routed>,
        table: &Arc<RoutingTable>,
    ) -> Done {
        Done {
            shared: shared.clone(),
            conn: conn.clone(),
            info,
            table: table.clone(),
            target: routed.map(|r| r.target.clone()),
            server_name: routed.map_or(0, |r| r.server_name),
            status: 0,
            canary: None,
            upstream: None,
            upstream_status: None,
            upstream_start: None,
            connect_time: None,
            slot: None,
            completed: false,
        }
    }

    fn service(&self) -> &str {
        match (&self.canary, &self.target) {
            (Some(canary), _) => &canary.service.name,
            (None, Some(target)) => &target.backend.service.name,
            (None, None) => "",
        }
    }

    fn metrics(&self) -> Arc<RequestMetrics> {
        let (method, method_label) = method_index(&self.info.method);
        let key = CacheKey {
            version: self.table.snapshot.version,
            route: self.target.as_ref().map_or(0, |t| Arc::as_ptr(t) as usize),
            host: self.server_name,
            status: self.status,
            method,
            canary: self.canary.is_some(),
        };
        self.shared.metrics.request(key, || {
            let target = self.target.as_deref();
            RequestLabels {
                host: match target {
                    Some(_) => self
                        .table
                        .snapshot
                        .virtual_host(&self.info.host)
                        .host
                        .get()
                        .to_string(),
                    None => "_".into(),
                },
                status: self.status.to_string(),
                method: method_label.to_string(),
                path: target.map(|t| t.path.clone()).unwrap_or_default(),
                namespace: target
                    .map(|t| t.ingress.namespace.clone())
                    .unwrap_or_default(),
                ingress: target.map(|t| t.ingress.name.clone()).unwrap_or_default(),
                service: self.service().to_string(),
                canary: self
                    .canary
                    .as_ref()
                    .map(|c| c.service.upstream_name())
                    .unwrap_or_default(),
            }
        })
    }
}

/// The client went away before the response was handed over (the request's task was
/// dropped, e.g. an HTTP/2 stream reset): completed as nginx's 499, so the connection is no
/// longer counted busy (its keep-alive timer runs again) and the request is counted.
impl Drop for Done {
    fn drop(&mut self) {
        if !self.completed {
            self.status = 499;
            self.complete(0, false);
        }
    }
}

impl Completion for Done {
    fn complete(&mut self, bytes_sent: u64, _finished: bool) {
        self.completed = true;
        self.slot = None;
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        let elapsed = self.info.start.elapsed();
        let request_length =
            self.info.head_length + self.info.request_length.bytes.load(Ordering::Relaxed);
        let upstream_time = self.upstream_start.map(|start| start.elapsed());
        let metrics = self.metrics();
        metrics.requests.inc();
        metrics.request_duration.observe(elapsed.as_secs_f64());
        metrics.request_size.observe(request_length as f64);
        metrics.response_size.observe(bytes_sent as f64);
        if let Some(t) = upstream_time {
            metrics.response_duration.observe(t.as_secs_f64());
        }
        if let Some(t) = self.connect_time {
            metrics.connect_duration.observe(t.as_secs_f64());
        }
        let logged = self.target.as_ref().is_none_or(|t| t.policy.access_log);
        if !logged || !self.shared.access_log.enabled() {
            return;
        }
        let record = AccessEntry {
            time: self.info.time,
            remote_addr: self.info.client.ip,
            method: self.info.method.clone(),
            host: std::mem::take(&mut self.info.host),
            uri: self.info.uri.clone(),
            protocol: self.info.protocol,
            status: self.status,
            bytes_sent,
            request_length,
            request_time: elapsed.as_secs_f64(),
            upstream_addr: self.upstream,
            upstream_status: self.upstream_status,
            upstream_response_time: upstream_time.map(|t| t.as_secs_f64()),
            route: self.target.clone(),
            canary: self.canary.clone(),
            request_id: std::mem::take(&mut self.info.request_id),
        };
        if !self.shared.access_log.log(record) {
            self.shared.metrics.access_log_dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_client_reads_the_list_as_nginx_real_ip() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(forwarded_client("1.2.3.4"), ip("1.2.3.4"));
        assert_eq!(forwarded_client("1.2.3.4, 10.0.0.1"), ip("1.2.3.4"));
        assert_eq!(forwarded_client(" 1.2.3.4 ,10.0.0.1 "), ip("1.2.3.4"));
        // With a port, bracketed IPv6, bare IPv6.
        assert_eq!(forwarded_client("1.2.3.4:5678"), ip("1.2.3.4"));
        assert_eq!(forwarded_client("[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(forwarded_client("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(forwarded_client("2001:db8::1, 10.0.0.1"), ip("2001:db8::1"));
        // A malformed entry ends the walk: the address to its right.
        assert_eq!(forwarded_client("unknown, 203.0.113.5"), ip("203.0.113.5"));
        assert_eq!(
            forwarded_client("1.1.1.1, garbage, 203.0.113.5, 10.0.0.1"),
            ip("203.0.113.5")
        );
        assert_eq!(forwarded_client("unknown"), None);
        assert_eq!(forwarded_client(""), None);
        assert_eq!(forwarded_client("1.2.3.4,, 10.0.0.1, "), ip("1.2.3.4"));
    }
}
