//! The L7 gateway's domain: virtual hosts, routes, backends and per-Ingress policy, as
//! ingress-nginx reads them from Ingress objects, annotations and its ConfigMap.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::objects::{ObjectRef, Problem};

/// Which Ingresses this gateway serves (`--ingress-class`, `--watch-ingress-without-class`,
/// `--configmap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOptions {
    /// IngressClass name (`--ingress-class`, default `rvs`); also the legacy
    /// `kubernetes.io/ingress.class` annotation's value.
    pub ingress_class: String,
    /// `spec.controller` an IngressClass must name.
    pub controller: String,
    /// Serve Ingresses that name no class at all.
    pub watch_without_class: bool,
    /// The global ConfigMap (`--configmap NAMESPACE/NAME`).
    pub configmap: Option<(String, String)>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            ingress_class: "rvs".into(),
            controller: CONTROLLER.into(),
            watch_without_class: false,
            configmap: None,
        }
    }
}

/// The `spec.controller` of rvs's IngressClass.
pub const CONTROLLER: &str = "rvs.io/ingress-controller";

/// namespace/name of an Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IngressRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for IngressRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The gateway's whole configuration, versioned; swapped atomically.
#[derive(Debug, Clone, Default)]
pub struct IngressSnapshot {
    pub version: u64,
    /// From the ConfigMap (or defaults).
    pub settings: Arc<GlobalSettings>,
    /// Named hosts: exact ones first (sorted), then wildcards (longest suffix first).
    pub hosts: Vec<VirtualHost>,
    /// Exact host name -> index in `hosts` (see [`IngressSnapshot::index_hosts`]).
    pub exact_hosts: std::collections::HashMap<String, usize>,
    /// The catch-all server (`_` in ingress-nginx): rules without a host, and the
    /// `defaultBackend` of the Ingresses; also what an unknown host gets.
    pub default_host: VirtualHost,
    /// TLS certificates from `spec.tls` Secrets.
    pub certificates: Vec<Arc<Certificate>>,
    /// Every Ingress served, with what was parsed from it (kept for a bad edit).
    pub ingresses: Vec<Arc<ParsedIngress>>,
    /// A hash of everything above except endpoints (ingress-nginx's `config_hash`).
    pub config_hash: u64,
}

impl IngressSnapshot {
    /// Fills `exact_hosts` from `hosts`; the builder calls it last.
    pub fn index_hosts(&mut self) {
        self.exact_hosts = self
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, vh)| match vh.host.get() {
                HostMatch::Exact(h) => Some((h.clone(), i)),
                _ => None,
            })
            .collect();
    }

    /// The server for a request's host (lowercase, port stripped): the exact host, else the
    /// first matching wildcard, else the catch-all.
    pub fn virtual_host(&self, host: &str) -> &VirtualHost {
        if let Some(&i) = self.exact_hosts.get(host) {
            if let Some(vh) = self.hosts.get(i) {
                return vh;
            }
        }
        self.hosts
            .iter()
            .find(|vh| {
                matches!(vh.host.get(), HostMatch::Wildcard(_)) && vh.host.get().matches(host)
            })
            .unwrap_or(&self.default_host)
    }
}

impl VirtualHost {
    /// The first route (in precedence order) whose path matches; else the default route.
    pub fn route(&self, path: &str) -> Option<&Arc<RouteTarget>> {
        self.routes
            .iter()
            .find(|r| r.path.matches(path))
            .map(|r| &r.target)
            .or(self.default_route.as_ref())
    }

    /// Like [`VirtualHost::route`], with the matched path rule (for regex captures).
    pub fn route_with_path(&self, path: &str) -> Option<(Option<&PathMatch>, &Arc<RouteTarget>)> {
        match self.routes.iter().find(|r| r.path.matches(path)) {
            Some(r) => Some((Some(&r.path), &r.target)),
            None => self.default_route.as_ref().map(|t| (None, t)),
        }
    }
}

/// How a request's host is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// Lowercase host name without port.
    Exact(String),
    /// `*.example.com`: the suffix `.example.com` (lowercase); matches exactly one more label.
    Wildcard(String),
    /// The catch-all server.
    Any,
}

impl HostMatch {
    /// Whether `host` (lowercase, port stripped) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostMatch::Any => true,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostMatch::Any => f.write_str("_"),
        }
    }
}

/// One server block: a host and its routes in match order.
#[derive(Debug, Clone, Default)]
pub struct VirtualHost {
    pub host: HostMatchOrAny,
    /// In precedence order: the first route whose path matches wins. Exact paths first, then
    /// prefixes and regexes by path length, longest first (ties: Exact, Prefix, then regex).
    pub routes: Vec<Route>,
    /// An Ingress has `spec.tls` for this host: plain HTTP requests get a 308 to https when
    /// the route's `ssl_redirect` is on.
    pub tls: bool,
    /// What unmatched paths get: for the catch-all, the oldest Ingress's `defaultBackend`;
    /// for a named host, the `defaultBackend` of the oldest Ingress with a rule for it
    /// (ingress-nginx's `/` location for that server).
    pub default_route: Option<Arc<RouteTarget>>,
}

/// [`HostMatch`] with a default (`Any`), so `VirtualHost` can derive `Default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HostMatchOrAny(pub Option<HostMatch>);

impl HostMatchOrAny {
    pub fn get(&self) -> &HostMatch {
        self.0.as_ref().unwrap_or(&HostMatch::Any)
    }
}

/// A path and what it leads to.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: PathMatch,
    pub target: Arc<RouteTarget>,
}

/// How a request path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `pathType: Exact`: the whole path, case-sensitive.
    Exact(String),
    /// `pathType: Prefix` (element-wise: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`),
    /// and `ImplementationSpecific` without regex (a plain string prefix, as nginx does).
    Prefix { path: String, element_wise: bool },
    /// `use-regex` / `rewrite-target`: a case-insensitive regex anchored at the start
    /// (nginx `location ~* ^...`).
    Regex(RegexPath),
}

/// A compiled path regex; equality by pattern.
#[derive(Debug, Clone)]
pub struct RegexPath {
    pub pattern: String,
    pub regex: regex::Regex,
}

impl PartialEq for RegexPath {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl PathMatch {
    /// The path as written in the Ingress (the `path` label of the metrics).
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix { path: p, .. } => p,
            PathMatch::Regex(r) => &r.pattern,
        }
    }

    /// Whether `path` (the request path, without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix {
                path: prefix,
                element_wise: false,
            } => path.starts_with(prefix.as_str()),
            PathMatch::Prefix {
                path: prefix,
                element_wise: true,
            } => {
                let prefix = prefix.trim_end_matches('/');
                if prefix.is_empty() {
                    return true;
                }
                match path.strip_prefix(prefix) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
            PathMatch::Regex(r) => r.regex.find(path).is_some_and(|m| m.start() == 0),
        }
    }
}

/// Where a matched request goes and under which policy.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub ingress: IngressRef,
    /// The path as written (metrics label `path`).
    pub path: String,
    pub backend: Arc<Backend>,
    /// A canary Ingress for the same host and path.
    pub canary: Option<Canary>,
    pub policy: Arc<RoutePolicy>,
}

/// A Service port's endpoints, as the gateway dials them (pod addresses, never the ClusterIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: BackendService,
    /// Ready endpoints (or, with none ready, the serving terminating ones), sorted, unique.
    pub endpoints: Vec<SocketAddr>,
}

/// namespace/name:port of a backend Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendService {
    pub namespace: String,
    pub name: String,
    pub port: ServicePortRef,
}

impl BackendService {
    /// ingress-nginx's name for the upstream (`namespace-service-port`): its metrics'
    /// `canary` label holds the canary's.
    pub fn upstream_name(&self) -> String {
        format!("{}-{}-{}", self.namespace, self.name, self.port)
    }
}

impl fmt::Display for BackendService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServicePortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A canary Ingress's backend and when it takes a request (header, then cookie, then weight).
#[derive(Debug, Clone)]
pub struct Canary {
    pub ingress: IngressRef,
    pub backend: Arc<Backend>,
    pub rule: CanaryRule,
    /// The canary Ingress's own policy (timeouts, protocol...).
    pub policy: Arc<RoutePolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CanaryRule {
    /// `canary-by-header`: value `always` sends to the canary, `never` never does.
    pub by_header: Option<String>,
    /// `canary-by-header-value`: the value that sends to the canary instead of `always`.
    pub header_value: Option<String>,
    /// `canary-by-cookie`: cookie value `always` / `never`.
    pub by_cookie: Option<String>,
    /// `canary-weight` out of `weight_total` (`canary-weight-total`, default 100).
    pub weight: u32,
    pub weight_total: u32,
}

/// The protocol the gateway speaks to the backend (`backend-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    #[default]
    Http,
    Https,
    /// gRPC over h2c.
    Grpc,
    /// gRPC over TLS (h2).
    Grpcs,
    /// HTTP/2 prior knowledge (h2c).
    Http2,
}

impl BackendProtocol {
    pub fn is_grpc(self) -> bool {
        matches!(self, BackendProtocol::Grpc | BackendProtocol::Grpcs)
    }
    pub fn is_http2(self) -> bool {
        !matches!(self, BackendProtocol::Http | BackendProtocol::Https)
    }
    pub fn is_tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::Grpcs)
    }
}

/// When a failed attempt is tried again on another endpoint (`proxy-next-upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextUpstream {
    /// Connect or send failure, or the upstream closed before a response.
    pub error: bool,
    /// Connect or response-header timeout.
    pub timeout: bool,
    pub http_500: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
    pub http_403: bool,
    pub http_404: bool,
    pub http_429: bool,
    /// `non_idempotent` (or `retry-non-idempotent: "true"`): POST, LOCK, PATCH retried too.
    pub non_idempotent: bool,
    /// Attempts in all, the first included (`proxy-next-upstream-tries`; 0 = unlimited,
    /// bounded by the endpoints).
    pub tries: u32,
    /// `proxy-next-upstream-timeout`: no new attempt after this long (None: unlimited).
    pub timeout_total: Option<Duration>,
}

impl Default for NextUpstream {
    fn default() -> Self {
        NextUpstream {
            error: true,
            timeout: true,
            http_500: false,
            http_502: false,
            http_503: false,
            http_504: false,
            http_403: false,
            http_404: false,
            http_429: false,
            non_idempotent: false,
            tries: 3,
            timeout_total: None,
        }
    }
}

impl NextUpstream {
    /// Retries disabled (`off`).
    pub fn off() -> Self {
        NextUpstream {
            error: false,
            timeout: false,
            tries: 1,
            ..NextUpstream::default()
        }
    }

    /// Whether a response status is a reason to try another endpoint.
    pub fn retries_status(&self, status: u16) -> bool {
        match status {
            500 => self.http_500,
            502 => self.http_502,
            503 => self.http_503,
            504 => self.http_504,
            403 => self.http_403,
            404 => self.http_404,
            429 => self.http_429,
            _ => false,
        }
    }
}

/// Request rate and connection limits (ingress-nginx `limit-*`, plus rvs's per-Ingress one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// `limit-rps`: requests per second per client address.
    pub rps: Option<u32>,
    /// `limit-rpm`: requests per minute per client address.
    pub rpm: Option<u32>,
    /// `limit-connections`: concurrent connections (in-flight requests) per client address.
    pub connections: Option<u32>,
    /// `limit-burst-multiplier` (default 5): burst = rate x multiplier.
    pub burst_multiplier: u32,
    /// `rvs.io/limit-rps`: requests per second for the whole Ingress, all clients together.
    pub ingress_rps: Option<u32>,
    /// `rvs.io/limit-burst` (default: `ingress_rps`).
    pub ingress_burst: Option<u32>,
    /// `limit-allowlist` / `limit-whitelist`: clients exempt from the limits.
    pub exempt: Vec<ipnet::IpNet>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rps.is_none()
            && self.rpm.is_none()
            && self.connections.is_none()
            && self.ingress_rps.is_none()
    }
}

/// How an endpoint is chosen (`load-balance`, `upstream-hash-by`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balancing {
    /// `load-balance: round_robin` (the default).
    #[default]
    RoundRobin,
    /// `load-balance: ewma`: the better of two random endpoints by their response-time EWMA
    /// times their requests in flight, as ingress-nginx's balancer does.
    Ewma,
    /// `upstream-hash-by`: a key made of request variables picks the endpoint, consistently
    /// (rendezvous hashing: an endpoint change moves only the keys it served).
    Hash(Template),
}

/// Text with nginx variables, filled in per request: an `upstream-hash-by` key such as
/// `$request_uri` or `$host$http_x_user`, a redirect's `https://new.example$request_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written.
    pub template: String,
    pub parts: Vec<TemplatePart>,
}

/// One piece of a template: literal text or an nginx variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `$request_uri`: path and query as sent.
    RequestUri,
    /// `$escaped_request_uri`: the request URI percent-encoded as a query value.
    EscapedRequestUri,
    /// `$uri`: the path.
    Uri,
    /// `$args` / `$query_string`.
    Args,
    /// `$host`: lowercase, no port.
    Host,
    /// `$remote_addr` / `$binary_remote_addr`.
    RemoteAddr,
    /// `$scheme`.
    Scheme,
    /// `$request_method`.
    Method,
    /// `$http_NAME`: a request header (name lowercase, `_` as `-`).
    Header(String),
    /// `$cookie_NAME`.
    Cookie(String),
    /// `$arg_NAME`: a query parameter.
    Arg(String),
}

/// `affinity: cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAffinity {
    /// `session-cookie-name` (default `INGRESSCOOKIE`).
    pub name: String,
    /// `session-cookie-path` (default: the route's path, `/` for regex).
    pub path: Option<String>,
    /// `session-cookie-max-age` seconds (None: a session cookie).
    pub max_age: Option<u64>,
    /// `session-cookie-secure`.
    pub secure: bool,
    /// `session-cookie-samesite`.
    pub same_site: Option<String>,
    /// `affinity-mode: persistent` keeps clients on their endpoint even when endpoints are
    /// added (`balanced`, the default, also keeps them; rvs re-pins only when the endpoint
    /// is gone).
    pub change_on_failure: bool,
}

/// Everything an Ingress's annotations (over the ConfigMap's defaults) decide for its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    pub next_upstream: NextUpstream,
    /// `proxy-body-size` (default 1m); None = unlimited (`0`).
    pub body_size_limit: Option<u64>,
    /// `allowlist-source-range` / `whitelist-source-range`: only these clients (403 otherwise).
    pub allowlist: Vec<ipnet::IpNet>,
    /// `denylist-source-range`: these clients get 403.
    pub denylist: Vec<ipnet::IpNet>,
    pub limits: Limits,
    pub affinity: Option<CookieAffinity>,
    /// `rewrite-target`: the upstream path, `$1`.. replaced with the path regex's captures.
    pub rewrite_target: Option<String>,
    /// `app-root`: `/` redirects (302) here.
    pub app_root: Option<String>,
    /// `ssl-redirect` (default true; only where the host has TLS).
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect even without TLS for the host.
    pub force_ssl_redirect: bool,
    pub backend_protocol: BackendProtocol,
    /// `upstream-vhost`: the Host header sent upstream.
    pub upstream_vhost: Option<String>,
    /// `x-forwarded-prefix`: sent as `X-Forwarded-Prefix`.
    pub forwarded_prefix: Option<String>,
    /// `enable-access-log` (default: the ConfigMap's `disable-access-log` negated).
    pub access_log: bool,
    /// `load-balance` / `upstream-hash-by`.
    pub balancing: Balancing,
    /// `enable-cors` and the `cors-*` annotations (shared: a request on the route holds it).
    pub cors: Option<Arc<Cors>>,
    /// `temporal-redirect` / `permanent-redirect`: every request is answered with it.
    pub redirect: Option<Redirect>,
    /// `auth-type: basic`: users from the `auth-secret` Secret.
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// `auth-url` and its companions: each request is first asked about at a service.
    pub external_auth: Option<Arc<ExternalAuth>>,
    /// `from-to-www-redirect`: `www.` + host (or host without `www.`) redirects here (308),
    /// unless an Ingress serves that name itself.
    pub from_to_www_redirect: bool,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            next_upstream: NextUpstream::default(),
            body_size_limit: Some(1 << 20),
            allowlist: Vec::new(),
            denylist: Vec::new(),
            limits: Limits {
                burst_multiplier: 5,
                ..Limits::default()
            },
            affinity: None,
            rewrite_target: None,
            app_root: None,
            ssl_redirect: true,
            force_ssl_redirect: false,
            backend_protocol: BackendProtocol::Http,
            upstream_vhost: None,
            forwarded_prefix: None,
            access_log: true,
            balancing: Balancing::RoundRobin,
            cors: None,
            redirect: None,
            basic_auth: None,
            external_auth: None,
            from_to_www_redirect: false,
        }
    }
}

/// External authentication as ingress-nginx configures nginx's `auth_request` (`auth-url`):
/// before a request goes upstream, its head (no body) is sent to `url`; a 2xx answer lets it
/// through (with `response_headers` copied from that answer onto the upstream request), 401
/// and 403 are passed to the client (401 becomes a redirect to `signin` when set), anything
/// else, or no answer, is a 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAuth {
    /// `auth-url`: http or https, with nginx variables.
    pub url: Template,
    /// A variable is part of the URL's host (`https://$host/...`): the gateway uses it only
    /// on routes of an exact host name, never letting a client pick the auth service.
    pub host_from_request: bool,
    /// `auth-method` (default `GET`).
    pub method: String,
    /// `auth-signin`: where a 401 sends the browser, with the original URL in `rd`.
    pub signin: Option<Template>,
    /// `auth-signin-redirect-param` (default `rd`).
    pub signin_redirect_param: String,
    /// `auth-response-headers`: lower-case header names.
    pub response_headers: Vec<String>,
    /// `auth-request-redirect`: sent as `X-Auth-Request-Redirect` (default: the request URI).
    pub request_redirect: Option<String>,
    /// `auth-cache-key` with `auth-cache-duration`: answers kept and reused.
    pub cache: Option<AuthCache>,
}

/// Which auth answers are kept, for how long, under which key (nginx's `proxy_cache` on the
/// auth location, as ingress-nginx configures it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCache {
    /// `auth-cache-key`: nginx variables, e.g. `$remote_user$http_authorization`.
    pub key: Template,
    /// `auth-cache-duration`'s status codes (default 200 202 401).
    pub statuses: Vec<u16>,
    /// `auth-cache-duration`'s time (default 5m).
    pub ttl: std::time::Duration,
}

/// HTTP Basic authentication as nginx's `auth_basic` does it: a request without valid
/// credentials gets 401 and `WWW-Authenticate: Basic realm="..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// `auth-realm`.
    pub realm: String,
    pub users: BTreeMap<String, PasswordHash>,
}

/// A password hash as an htpasswd file holds it, in the schemes nginx reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2y$`, `$2a$`, `$2b$` (`htpasswd -B`).
    Bcrypt(String),
    /// `$apr1$` (`htpasswd`'s default) and `$1$`: MD5-crypt. The whole string.
    Md5Crypt(String),
    /// `$5$` and `$6$`: SHA-crypt. The whole string.
    ShaCrypt(String),
    /// `{SHA}`: base64 of the password's SHA-1 (`htpasswd -s`).
    Sha1(String),
    /// `{PLAIN}`.
    Plain(String),
}

impl PasswordHash {
    /// The scheme of an htpasswd hash; DES `crypt` and anything else unknown is refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let hash = raw.trim();
        if !hash.is_ascii() {
            return Err("is not a hash rvs checks (not ASCII)".into());
        }
        let known = if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
            PasswordHash::Bcrypt(hash.to_string())
        } else if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
            PasswordHash::Md5Crypt(hash.to_string())
        } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
            PasswordHash::ShaCrypt(hash.to_string())
        } else if let Some(digest) = hash.strip_prefix("{SHA}") {
            PasswordHash::Sha1(digest.to_string())
        } else if let Some(plain) = hash.strip_prefix("{PLAIN}") {
            PasswordHash::Plain(plain.to_string())
        } else {
            return Err(
                "is not a hash rvs checks (bcrypt, $apr1$/$1$ MD5, $5$/$6$ SHA-crypt, {SHA}, {PLAIN})"
                    .into(),
            );
        };
        Ok(known)
    }
}

/// An htpasswd file (`auth-secret-type: auth-file`, the Secret's `auth` key): `user:hash`
/// per line; blank lines and `#` comments skipped.
pub fn parse_htpasswd(text: &str) -> Result<BTreeMap<String, PasswordHash>, String> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {}: not user:hash", i + 1));
        };
        let hash =
            PasswordHash::parse(hash).map_err(|e| format!("line {} (user {user}): {e}", i + 1))?;
        // nginx reads the file top down: a user's first line counts.
        users.entry(user.to_string()).or_insert(hash);
    }
    if users.is_empty() {
        return Err("no users".into());
    }
    Ok(users)
}

/// CORS as ingress-nginx answers it: on an allowed origin every response gets the
/// `Access-Control-*` headers, and an `OPTIONS` request (a preflight) is answered 204 by the
/// gateway without reaching the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub allow_origin: CorsOrigins,
    /// `cors-allow-methods`, as written.
    pub allow_methods: String,
    /// `cors-allow-headers`, as written.
    pub allow_headers: String,
    /// `cors-expose-headers` (none by default).
    pub expose_headers: Option<String>,
    /// `cors-allow-credentials` (default true).
    pub allow_credentials: bool,
    /// `cors-max-age`, seconds.
    pub max_age: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*` (the default): every request, with or without `Origin`, gets
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// Only requests whose `Origin` is one of these (`scheme://host[:port]`, case-insensitive;
    /// `https://*.example.com` stands for one label) get the headers, with their own origin.
    Listed(Vec<String>),
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            allow_origin: CorsOrigins::Any,
            allow_methods: "GET, PUT, POST, DELETE, PATCH, OPTIONS".into(),
            allow_headers: "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,\
                Cache-Control,Content-Type,Range,Authorization"
                .into(),
            expose_headers: None,
            allow_credentials: true,
            max_age: 1_728_000,
        }
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request with this `Origin` header, or
    /// None when the request gets no CORS headers (its origin is not listed).
    pub fn allowed_origin<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        match &self.allow_origin {
            CorsOrigins::Any => Some("*"),
            CorsOrigins::Listed(patterns) => {
                let origin = origin?;
                patterns
                    .iter()
                    .any(|p| origin_matches(p, origin))
                    .then_some(origin)
            }
        }
    }
}

/// Whether `origin` matches `pattern`: equal ignoring ASCII case, or, for
/// `scheme://*.rest`, one DNS label (letters, digits, `-`) in place of the `*`.
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    let Some((prefix, suffix)) = pattern.split_once('*') else {
        return pattern.eq_ignore_ascii_case(origin);
    };
    let (Some(head), Some(rest)) = (origin.get(..prefix.len()), origin.get(prefix.len()..)) else {
        return false;
    };
    let Some(label_len) = rest.len().checked_sub(suffix.len()) else {
        return false;
    };
    let (Some(label), Some(tail)) = (rest.get(..label_len), rest.get(label_len..)) else {
        return false;
    };
    head.eq_ignore_ascii_case(prefix)
        && tail.eq_ignore_ascii_case(suffix)
        && !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `temporal-redirect` (302 by default) or `permanent-redirect` (301): the `Location` is the
/// URL as written, its nginx variables (`$request_uri`, `$host`...) filled in per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: u16,
    pub location: Template,
}

/// ConfigMap keys that are not per-Ingress: client connections, upstream pools, shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalSettings {
    /// `keep-alive` (75 s): idle time of a client keep-alive connection; 0 disables keep-alive.
    pub keep_alive: Duration,
    /// `keep-alive-requests` (1000): requests per client connection.
    pub keep_alive_requests: u32,
    /// `upstream-keepalive-connections` (320): idle connections kept per endpoint.
    pub upstream_keepalive_connections: usize,
    /// `upstream-keepalive-timeout` (60 s).
    pub upstream_keepalive_timeout: Duration,
    /// `upstream-keepalive-requests` (10000).
    pub upstream_keepalive_requests: u32,
    /// `upstream-keepalive-time` (1 h): a connection's whole life.
    pub upstream_keepalive_time: Duration,
    /// `client-header-timeout` (60 s).
    pub client_header_timeout: Duration,
    /// `client-body-timeout` (60 s).
    pub client_body_timeout: Duration,
    /// `large-client-header-buffers` (4 8k): the largest request head in bytes (431 above).
    pub max_header_bytes: usize,
    /// `worker-shutdown-timeout` (240 s): how long in-flight requests may finish on SIGTERM.
    pub worker_shutdown_timeout: Duration,
    /// `limit-req-status-code` (503).
    pub limit_req_status: u16,
    /// `limit-conn-status-code` (503).
    pub limit_conn_status: u16,
    /// `use-forwarded-headers` (false): trust the client's `X-Forwarded-*`.
    pub use_forwarded_headers: bool,
    /// `compute-full-forwarded-for` (false): append to the client's `X-Forwarded-For`.
    pub compute_full_forwarded_for: bool,
    /// `generate-request-id` (true).
    pub generate_request_id: bool,
    /// `use-http2` (true): offer h2 in ALPN.
    pub use_http2: bool,
    /// `ssl-redirect` default for Ingresses (true).
    pub ssl_redirect: bool,
    /// `hsts` (true) with `hsts-max-age` (31536000) on TLS responses.
    pub hsts: Option<u64>,
    /// `hsts-include-subdomains` (true).
    pub hsts_include_subdomains: bool,
    /// `hsts-preload` (false).
    pub hsts_preload: bool,
    /// `no-tls-redirect-locations` ("/.well-known/acme-challenge"): Ingress paths starting
    /// with one of these are never redirected to https (ACME HTTP-01 challenges).
    pub no_tls_redirect_locations: Vec<String>,
    /// Defaults for every Ingress (`proxy-*`, `proxy-body-size`, `limit-*` ...).
    pub defaults: RoutePolicy,
}

impl GlobalSettings {
    /// The `Strict-Transport-Security` value for TLS responses, as ingress-nginx writes it.
    pub fn hsts_header(&self) -> Option<String> {
        let max_age = self.hsts?;
        let mut value = format!("max-age={max_age}");
        if self.hsts_include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.hsts_preload {
            value.push_str("; preload");
        }
        Some(value)
    }

    /// An Ingress path that `no-tls-redirect-locations` keeps on plain HTTP.
    pub fn never_redirected(&self, ingress_path: &str) -> bool {
        self.no_tls_redirect_locations
            .iter()
            .any(|location| ingress_path.starts_with(location.as_str()))
    }
}

impl Default for GlobalSettings {
    fn default() -> Self {
        GlobalSettings {
            keep_alive: Duration::from_secs(75),
            keep_alive_requests: 1000,
            upstream_keepalive_connections: 320,
            upstream_keepalive_timeout: Duration::from_secs(60),
            upstream_keepalive_requests: 10_000,
            upstream_keepalive_time: Duration::from_secs(3600),
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            worker_shutdown_timeout: Duration::from_secs(240),
            limit_req_status: 503,
            limit_conn_status: 503,
            use_forwarded_headers: false,
            compute_full_forwarded_for: false,
            generate_request_id: true,
            use_http2: true,
            ssl_redirect: true,
            hsts: Some(31_536_000),
            hsts_include_subdomains: true,
            hsts_preload: false,
            no_tls_redirect_locations: vec!["/.well-known/acme-challenge".to_string()],
            defaults: RoutePolicy::default(),
        }
    }
}

/// A TLS certificate from a `kubernetes.io/tls` Secret, for the hosts of `spec.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub secret: ObjectRef,
    /// Lowercase host names (may start with `*.`) it is chosen for by SNI.
    pub hosts: Vec<String>,
    /// PEM: the chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

/// An Ingress as parsed: its rules, policy and what it is, independent of endpoints.
#[derive(Debug, Clone)]
pub struct ParsedIngress {
    pub ingress: IngressRef,
    /// Rules flattened: (host or None for the catch-all, path, backend service).
    pub rules: Vec<ParsedRule>,
    pub default_backend: Option<BackendService>,
    /// Hosts listed in `spec.tls` and their Secret (namespace/name).
    pub tls: Vec<(Vec<String>, String)>,
    pub policy: Arc<RoutePolicy>,
    /// Set when this is a canary (`canary: "true"`).
    pub canary: Option<CanaryRule>,
    /// Creation order for conflicts: (creationTimestamp, namespace/name).
    pub created: String,
}

#[derive(Debug, Clone)]
pub struct ParsedRule {
    pub host: Option<String>,
    pub path: PathMatch,
    pub backend: BackendService,
}

/// What building the gateway's snapshot produced.
#[derive(Debug, Clone, Default)]
pub struct IngressBuild {
    pub snapshot: IngressSnapshot,
    /// Refused objects: the previous version (if any) keeps serving.
    pub problems: Vec<Problem>,
    /// Served, but something is not honoured (an unsupported annotation), one per Ingress
    /// and annotation.
    pub warnings: Vec<Problem>,
    /// The warnings that are a host and path another (older) Ingress already serves: what
    /// the admission webhook refuses.
    pub conflicts: Vec<Problem>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn origins_match_exactly_or_one_label_for_the_wildcard() {
        assert!(origin_matches("https://a.example", "https://a.example"));
        assert!(origin_matches("https://a.example", "HTTPS://A.Example"));
        assert!(!origin_matches("https://a.example", "http://a.example"));
        assert!(!origin_matches(
            "https://a.example",
            "https://a.example:8443"
        ));
        assert!(!origin_matches(
            "https://a.example",
            "https://a.example.evil"
        ));
        let wild = "https://*.example.com:8443";
        assert!(origin_matches(wild, "https://app.example.com:8443"));
        assert!(origin_matches(wild, "https://App-2.EXAMPLE.com:8443"));
        assert!(!origin_matches(wild, "https://example.com:8443"));
        assert!(!origin_matches(wild, "https://.example.com:8443"));
        assert!(!origin_matches(wild, "https://a.b.example.com:8443"));
        assert!(!origin_matches(wild, "https://app.example.com"));
        assert!(!origin_matches(wild, "https://évil.example.com:8443"));
        assert!(!origin_matches(wild, "h"));
    }

    #[test]
    fn allowed_origin() {
        let any = Cors::default();
        assert_eq!(any.allowed_origin(None), Some("*"));
        assert_eq!(any.allowed_origin(Some("https://x.example")), Some("*"));
        let listed = Cors {
            allow_origin: CorsOrigins::Listed(vec!["https://*.example.com".into()]),
            ..Cors::default()
        };
        assert_eq!(listed.allowed_origin(None), None);
        assert_eq!(
            listed.allowed_origin(Some("https://app.example.com")),
            Some("https://app.example.com")
        );
        assert_eq!(listed.allowed_origin(Some("https://app.example.net")), None);
    }

    #[test]
    fn htpasswd_files() {
        let users = parse_htpasswd(
            "# team\n\nalice:$apr1$abcdefgh$aJUuGLjz3OI4ylHF//t5U1\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
             carol:$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n\
             dave:$6$saltsalt$x\nerin:{PLAIN}pw\n",
        )
        .unwrap();
        assert_eq!(users.len(), 5);
        assert!(matches!(users["alice"], PasswordHash::Md5Crypt(_)));
        assert_eq!(
            users["bob"],
            PasswordHash::Sha1("W6ph5Mm5Pz8GgiULbPgzG37mj9g=".into())
        );
        assert!(matches!(users["carol"], PasswordHash::Bcrypt(_)));
        assert!(matches!(users["dave"], PasswordHash::ShaCrypt(_)));
        assert_eq!(users["erin"], PasswordHash::Plain("pw".into()));
        assert_eq!(
            parse_htpasswd("alice:$apr1$a$b\neve:abJnggxhB/yWI").unwrap_err(),
            "line 2 (user eve): is not a hash rvs checks (bcrypt, $apr1$/$1$ MD5, $5$/$6$ SHA-crypt, {SHA}, {PLAIN})"
        );
        assert_eq!(
            parse_htpasswd("alice").unwrap_err(),
            "line 1: not user:hash"
        );
        assert_eq!(parse_htpasswd("# nobody\n").unwrap_err(), "no users");
    }

    proptest! {
        /// A wildcard origin admits exactly one label of letters, digits and `-` in the
        /// place of its `*`, whatever the rest of the origin.
        #[test]
        fn wildcard_is_one_label(label in "[A-Za-z0-9.-]{0,12}", port in 1u16..) {
            let pattern = format!("https://*.example.com:{port}");
            let origin = format!("https://{label}.example.com:{port}");
            let one_label = !label.is_empty() && !label.contains('.');
            prop_assert_eq!(origin_matches(&pattern, &origin), one_label);
            // Any other suffix or scheme: never.
            let other = format!("http://{label}.example.com:{port}");
            prop_assert!(!origin_matches(&pattern, &other));
        }

        /// Never panics, whatever the bytes.
        #[test]
        fn matching_arbitrary_text_is_total(pattern in ".{0,20}", origin in ".{0,20}") {
            let _ = origin_matches(&pattern, &origin);
        }
    }
}
