//! `IngressSnapshot::build`: Ingresses, IngressClasses, Secrets and the ConfigMap -> virtual
//! hosts and routes, the way ingress-nginx reads them. Pure: the same objects (and L4
//! snapshot) give the same gateway snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

use super::annotations::{parse_annotations, BasicAuthSource, NGINX_PREFIX};
use super::configmap::parse_config_map;
use super::types::{
    parse_htpasswd, Backend, BackendService, BasicAuth, Canary, Certificate, GatewayOptions,
    GlobalSettings, HostMatch, HostMatchOrAny, IngressBuild, IngressRef, IngressSnapshot,
    ParsedIngress, ParsedRule, PasswordHash, PathMatch, Redirect, RegexPath, Route, RoutePolicy,
    RouteTarget, ServicePortRef, Template, TemplatePart, VirtualHost,
};
use crate::objects::{ObjectRef, ObjectSet, Origin, Problem, Sourced};
use crate::{Frontend, FrontendKind, Protocol, Snapshot};

const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl IngressSnapshot {
    /// Builds the gateway's snapshot. An Ingress with a problem is refused; if `previous`
    /// served it, its last good version keeps serving, against the current endpoints.
    pub fn build(
        objects: &ObjectSet,
        services: &Snapshot,
        options: &GatewayOptions,
        previous: Option<&IngressSnapshot>,
    ) -> IngressBuild {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let settings = Arc::new(settings(objects, options, &mut problems, &mut warnings));

        let mut origins: HashMap<IngressRef, Origin> = HashMap::new();
        let mut served: Vec<Arc<ParsedIngress>> = Vec::new();
        for sourced in &objects.ingresses {
            if !is_ours(&sourced.object, &objects.ingress_classes, options) {
                continue;
            }
            let parsed = parse_ingress(sourced, &settings.defaults, &objects.secrets);
            warnings.extend(parsed.warnings);
            origins
                .entry(parsed.ingress.clone())
                .or_insert_with(|| sourced.origin.clone());
            if parsed.problems.is_empty() {
                if let Some(ingress) = parsed.parsed {
                    served.push(Arc::new(ingress));
                }
                continue;
            }
            problems.extend(parsed.problems);
            let kept =
                previous.and_then(|p| p.ingresses.iter().find(|old| old.ingress == parsed.ingress));
            if let Some(old) = kept {
                served.push(old.clone());
            }
        }
        served.sort_by(|a, b| a.created.cmp(&b.created));
        served.dedup_by(|b, a| a.ingress == b.ingress);

        let mut assembly = Assembly {
            services,
            objects,
            origins: &origins,
            backends: HashMap::new(),
            warnings: BTreeSet::new(),
            conflicts: BTreeSet::new(),
        };
        let (hosts, default_host) = assembly.hosts(&served);
        let certificates = certificates(&served, objects, previous);
        warnings.extend(assembly.warnings);
        let conflicts = assembly.conflicts.into_iter().collect();

        let mut snapshot = IngressSnapshot {
            version: previous.map_or(1, |p| p.version + 1),
            config_hash: config_hash(&served, &settings, &certificates),
            settings,
            hosts,
            exact_hosts: HashMap::new(),
            default_host,
            certificates,
            ingresses: served,
        };
        snapshot.index_hosts();
        problems.sort();
        problems.dedup();
        warnings.sort();
        warnings.dedup();
        IngressBuild {
            snapshot,
            problems,
            warnings,
            conflicts,
        }
    }
}

/// The ConfigMap named by `--configmap`, or the defaults.
fn settings(
    objects: &ObjectSet,
    options: &GatewayOptions,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> GlobalSettings {
    let Some((namespace, name)) = &options.configmap else {
        return GlobalSettings::default();
    };
    let object = ObjectRef {
        kind: "ConfigMap".into(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let found = objects.config_maps.iter().find(|cm| {
        cm.object.metadata.name.as_deref() == Some(name.as_str())
            && namespace_of(cm.object.metadata.namespace.as_deref()) == namespace.as_str()
    });
    match found {
        Some(cm) => {
            let empty = BTreeMap::new();
            let data = cm.object.data.as_ref().unwrap_or(&empty);
            let (settings, p, w) = parse_config_map(data, &cm.origin, &object);
            problems.extend(p);
            warnings.extend(w);
            settings
        }
        None => {
            problems.push(Problem {
                origin: Origin::default(),
                object: Some(object),
                field: String::new(),
                message: "not found (named by --configmap); using the defaults".into(),
            });
            GlobalSettings::default()
        }
    }
}

fn namespace_of(namespace: Option<&str>) -> &str {
    namespace.unwrap_or("default")
}

/// Whether this gateway serves `ingress`: the legacy class annotation, else
/// `spec.ingressClassName` naming our IngressClass, else (no class at all) with
/// `--watch-ingress-without-class` or a default IngressClass of our controller.
pub fn is_ours(
    ingress: &Ingress,
    classes: &[Sourced<IngressClass>],
    options: &GatewayOptions,
) -> bool {
    if let Some(class) = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLASS_ANNOTATION))
    {
        return *class == options.ingress_class;
    }
    let our_controller = |c: &IngressClass| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(options.controller.as_str())
    };
    match ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        Some(name) => {
            name == options.ingress_class
                && classes.iter().any(|c| {
                    c.object.metadata.name.as_deref() == Some(name) && our_controller(&c.object)
                })
        }
        None => {
            options.watch_without_class
                || classes.iter().any(|c| {
                    our_controller(&c.object)
                        && c.object
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                            .is_some_and(|v| v == "true")
                })
        }
    }
}

/// What parsing one Ingress gave.
struct IngressParse {
    ingress: IngressRef,
    /// Set when there is no problem.
    parsed: Option<ParsedIngress>,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

struct Ctx<'a> {
    origin: &'a Origin,
    object: &'a ObjectRef,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origin.clone(),
            object: Some(self.object.clone()),
            field: field.into(),
            message: message.into(),
        });
    }

    /// `Ok` as `Some`; `Err` a problem on `field`.
    fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(field, message);
                None
            }
        }
    }
}

fn parse_ingress(
    sourced: &Sourced<Ingress>,
    defaults: &RoutePolicy,
    secrets: &[Sourced<Secret>],
) -> IngressParse {
    let ingress = &sourced.object;
    let meta = &ingress.metadata;
    let iref = IngressRef {
        namespace: namespace_of(meta.namespace.as_deref()).to_string(),
        name: meta.name.clone().unwrap_or_default(),
    };
    let object = ObjectRef {
        kind: "Ingress".into(),
        namespace: iref.namespace.clone(),
        name: iref.name.clone(),
    };
    let mut ctx = Ctx {
        origin: &sourced.origin,
        object: &object,
        problems: Vec::new(),
    };
    let empty = BTreeMap::new();
    let annotations = parse_annotations(
        meta.annotations.as_ref().unwrap_or(&empty),
        defaults,
        &sourced.origin,
        &object,
    );
    ctx.problems.extend(annotations.problems);
    let use_regex = annotations.use_regex;
    let mut policy = annotations.policy;
    let mut auth_warning = None;
    if let Some(source) = &annotations.basic_auth {
        // As ingress-nginx (a denied location): without usable users the routes are served
        // but let nobody in, rather than staying open or keeping an older open version.
        let auth = basic_auth(secrets, &iref.namespace, source).unwrap_or_else(|message| {
            auth_warning = Some(Problem {
                origin: sourced.origin.clone(),
                object: Some(object.clone()),
                field: format!("metadata.annotations[{NGINX_PREFIX}auth-secret]"),
                message: format!("{message}; every request to its routes gets 401"),
            });
            BasicAuth {
                realm: source.realm.clone(),
                users: BTreeMap::new(),
            }
        });
        policy.basic_auth = Some(Arc::new(auth));
    }

    let spec = ingress.spec.clone().unwrap_or_default();
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(raw) => match parse_host(raw) {
                Ok(h) => Some(h),
                Err(message) => {
                    ctx.problem(format!("spec.rules[{i}].host"), message);
                    continue;
                }
            },
        };
        let Some(http) = &rule.http else { continue };
        for (j, path) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let path_match = parse_path(
                path.path.as_deref(),
                &path.path_type,
                use_regex,
                &field,
                &mut ctx,
            );
            let backend = parse_backend(
                &path.backend,
                &iref.namespace,
                &format!("{field}.backend"),
                &mut ctx,
            );
            if let (Some(path), Some(backend)) = (path_match, backend) {
                rules.push(ParsedRule {
                    host: host.clone(),
                    path,
                    backend,
                });
            }
        }
    }
    let default_backend = spec
        .default_backend
        .as_ref()
        .and_then(|b| parse_backend(b, &iref.namespace, "spec.defaultBackend", &mut ctx));
    if spec.rules.as_deref().unwrap_or_default().is_empty() && spec.default_backend.is_none() {
        ctx.problem("spec", "no rules and no defaultBackend");
    }

    let mut tls = Vec::new();
    let mut tls_warnings = Vec::new();
    for (i, entry) in spec.tls.iter().flatten().enumerate() {
        let mut hosts = Vec::new();
        for (k, raw) in entry.hosts.iter().flatten().enumerate() {
            if let Some(h) = ctx.check(format!("spec.tls[{i}].hosts[{k}]"), parse_host(raw)) {
                hosts.push(h);
            }
        }
        let secret = entry.secret_name.clone().unwrap_or_default();
        if !secret.is_empty() {
            // As ingress-nginx: the Ingress is served, its hosts get the default
            // certificate until the Secret is there (cert-manager creates it later).
            if let Err(message) = tls_secret(secrets, &iref.namespace, &secret) {
                tls_warnings.push(Problem {
                    origin: sourced.origin.clone(),
                    object: Some(object.clone()),
                    field: format!("spec.tls[{i}].secretName"),
                    message: format!("{message}; the default certificate serves its hosts"),
                });
            }
        }
        tls.push((hosts, secret));
    }

    let parsed = ctx.problems.is_empty().then(|| ParsedIngress {
        ingress: iref.clone(),
        rules,
        default_backend,
        tls,
        policy: Arc::new(policy),
        canary: annotations.canary,
        created: created(ingress, &iref),
    });
    let mut warnings = annotations.warnings;
    warnings.extend(tls_warnings);
    warnings.extend(auth_warning);
    IngressParse {
        ingress: iref,
        parsed,
        problems: ctx.problems,
        warnings,
    }
}

/// `(creationTimestamp, namespace/name)` as one string that sorts in that order; no
/// timestamp sorts first.
fn created(ingress: &Ingress, iref: &IngressRef) -> String {
    let stamp = ingress
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| {
            let secs = u64::try_from(t.0.as_second()).unwrap_or(0);
            let nanos = u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0);
            format!("{secs:020}.{nanos:09}")
        })
        .unwrap_or_default();
    format!("{stamp} {}/{}", iref.namespace, iref.name)
}

/// A rule's host: lowercase DNS name, a wildcard only as the whole first label.
pub fn parse_host(raw: &str) -> Result<String, String> {
    let host = raw.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(host)
    } else {
        Err(format!(
            "{raw:?} is not a DNS name (a wildcard only as the whole first label, like *.example.com)"
        ))
    }
}

fn parse_path(
    raw: Option<&str>,
    path_type: &str,
    use_regex: bool,
    field: &str,
    ctx: &mut Ctx,
) -> Option<PathMatch> {
    let path = raw.filter(|p| !p.is_empty()).unwrap_or("/");
    let must_be_absolute = |ctx: &mut Ctx| {
        let ok = path.starts_with('/');
        if !ok {
            ctx.problem(
                format!("{field}.path"),
                format!("{path:?} does not start with /"),
            );
        }
        ok
    };
    match path_type {
        "Exact" => must_be_absolute(ctx).then(|| PathMatch::Exact(path.to_string())),
        "Prefix" if !must_be_absolute(ctx) => None,
        "Prefix" | "ImplementationSpecific" if use_regex => match regex_path(path, path) {
            Ok(r) => Some(PathMatch::Regex(r)),
            Err(message) => {
                ctx.problem(format!("{field}.path"), message);
                None
            }
        },
        "Prefix" => Some(PathMatch::Prefix {
            path: path.to_string(),
            element_wise: true,
        }),
        "ImplementationSpecific" => Some(PathMatch::Prefix {
            path: path.to_string(),
            element_wise: false,
        }),
        "" => {
            ctx.problem(format!("{field}.pathType"), "missing");
            None
        }
        other => {
            ctx.problem(
                format!("{field}.pathType"),
                format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
            );
            None
        }
    }
}

/// nginx `location ~* ^<regex>`: case-insensitive, anchored at the start.
fn regex_path(pattern: &str, regex: &str) -> Result<RegexPath, String> {
    match regex::Regex::new(&format!("(?i)^{regex}")) {
        Ok(regex) => Ok(RegexPath {
            pattern: pattern.to_string(),
            regex,
        }),
        Err(e) => {
            let detail = e.to_string();
            let last = detail.lines().last().unwrap_or_default().trim().to_string();
            Err(format!(
                "{regex:?} is not a valid regular expression: {last}"
            ))
        }
    }
}

fn parse_backend(
    backend: &IngressBackend,
    namespace: &str,
    field: &str,
    ctx: &mut Ctx,
) -> Option<BackendService> {
    let Some(service) = &backend.service else {
        ctx.problem(
            format!("{field}.service"),
            "missing (resource backends are not supported)",
        );
        return None;
    };
    let port = service.port.as_ref();
    let port = match (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.as_deref())
            .filter(|n| !n.is_empty()),
    ) {
        (Some(n), None) => match u16::try_from(n) {
            Ok(n) if n > 0 => ServicePortRef::Number(n),
            _ => {
                ctx.problem(
                    format!("{field}.service.port.number"),
                    format!("{n} is not a port number (1-65535)"),
                );
                return None;
            }
        },
        (None, Some(name)) => ServicePortRef::Name(name.to_string()),
        _ => {
            ctx.problem(
                format!("{field}.service.port"),
                "needs exactly one of number and name",
            );
            return None;
        }
    };
    if service.name.is_empty() {
        ctx.problem(format!("{field}.service.name"), "missing");
        return None;
    }
    Some(BackendService {
        namespace: namespace.to_string(),
        name: service.name.clone(),
        port,
    })
}

/// The users of `auth-type: basic`: an htpasswd file under the Secret's `auth` key
/// (`auth-file`), or one key per user whose value is the hash (`auth-map`). `stringData` is
/// read too, as the API server would have merged it.
fn basic_auth(
    secrets: &[Sourced<Secret>],
    ingress_namespace: &str,
    source: &BasicAuthSource,
) -> Result<BasicAuth, String> {
    let namespace = source.namespace.as_deref().unwrap_or(ingress_namespace);
    let name = &source.secret;
    if namespace != ingress_namespace {
        // Whoever may write an Ingress must not get to read another namespace's Secrets.
        return Err(format!(
            "Secret {namespace}/{name} is in another namespace than the Ingress ({ingress_namespace})"
        ));
    }
    let secret = find_secret(secrets, namespace, name)?;
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        entries.insert(key.clone(), String::from_utf8_lossy(&value.0).into_owned());
    }
    for (key, value) in secret.string_data.iter().flatten() {
        entries.insert(key.clone(), value.clone());
    }
    let users = if source.map {
        let mut users = BTreeMap::new();
        for (user, hash) in &entries {
            let hash = PasswordHash::parse(hash)
                .map_err(|e| format!("Secret {namespace}/{name}: user {user}: {e}"))?;
            users.insert(user.clone(), hash);
        }
        if users.is_empty() {
            return Err(format!("Secret {namespace}/{name} has no users"));
        }
        users
    } else {
        let file = entries
            .get("auth")
            .ok_or_else(|| format!("Secret {namespace}/{name} has no auth (an htpasswd file)"))?;
        parse_htpasswd(file).map_err(|e| format!("Secret {namespace}/{name}: auth: {e}"))?
    };
    Ok(BasicAuth {
        realm: source.realm.clone(),
        users,
    })
}

fn find_secret<'a>(
    secrets: &'a [Sourced<Secret>],
    namespace: &str,
    name: &str,
) -> Result<&'a Secret, String> {
    secrets
        .iter()
        .map(|s| &*s.object)
        .find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && namespace_of(s.metadata.namespace.as_deref()) == namespace
        })
        .ok_or_else(|| format!("Secret {namespace}/{name} not found"))
}

/// A `kubernetes.io/tls` Secret's chain and key, checked to look like PEM.
fn tls_secret(
    secrets: &[Sourced<Secret>],
    namespace: &str,
    name: &str,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let secret = find_secret(secrets, namespace, name)?;
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_SECRET_TYPE {
        return Err(format!(
            "Secret {namespace}/{name} is of type {kind:?}, not {TLS_SECRET_TYPE}"
        ));
    }
    let get = |key: &str, marker: &str| -> Result<Vec<u8>, String> {
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("Secret {namespace}/{name} has no {key}"))?;
        let text = String::from_utf8_lossy(&data);
        let pem = text.lines().any(|l| {
            let l = l.trim();
            l.starts_with("-----BEGIN ") && l.ends_with(&format!("{marker}-----"))
        }) && text.contains("-----END ");
        if pem {
            Ok(data)
        } else {
            Err(format!(
                "Secret {namespace}/{name}: {key} is not PEM (no -----BEGIN ...{marker}----- block)"
            ))
        }
    };
    Ok((
        get("tls.crt", "CERTIFICATE")?,
        get("tls.key", "PRIVATE KEY")?,
    ))
}

/// Builds hosts and routes from the served Ingresses (oldest first), resolving backends.
struct Assembly<'a> {
    services: &'a Snapshot,
    objects: &'a ObjectSet,
    origins: &'a HashMap<IngressRef, Origin>,
    /// Each Service port's backend and whether the port exists.
    backends: HashMap<BackendService, (Arc<Backend>, bool)>,
    warnings: BTreeSet<Problem>,
    conflicts: BTreeSet<Problem>,
}

/// A route before its target is shared.
struct Pending {
    path: PathMatch,
    target: RouteTarget,
}

type Hosts = BTreeMap<Option<String>, Vec<Pending>>;

impl Assembly<'_> {
    /// `from-to-www-redirect`: for each host of such an Ingress, the other name (`www.` added
    /// or taken off) answers every request with a 308 to the same path on the Ingress's host,
    /// as ingress-nginx's extra server block does; a name some Ingress serves exactly is left
    /// alone (a wildcard host does not count, as in ingress-nginx).
    fn www_redirects(&mut self, served: &[Arc<ParsedIngress>], hosts: &mut Hosts) {
        let mut added: Vec<(String, Pending)> = Vec::new();
        for ingress in served.iter().filter(|i| i.canary.is_none()) {
            if !ingress.policy.from_to_www_redirect {
                continue;
            }
            for rule in &ingress.rules {
                let Some(host) = rule.host.as_deref().filter(|h| !h.starts_with('*')) else {
                    continue;
                };
                let other = match host.strip_prefix("www.") {
                    Some(bare) => bare.to_string(),
                    None => format!("www.{host}"),
                };
                let taken = hosts.contains_key(&Some(other.clone()))
                    || added.iter().any(|(name, _)| *name == other);
                if taken {
                    continue;
                }
                let policy = RoutePolicy {
                    redirect: Some(Redirect {
                        status: 308,
                        location: Template {
                            template: format!("$scheme://{host}$request_uri"),
                            parts: vec![
                                TemplatePart::Scheme,
                                TemplatePart::Literal(format!("://{host}")),
                                TemplatePart::RequestUri,
                            ],
                        },
                    }),
                    // Nothing on the other name is served: it only redirects.
                    basic_auth: None,
                    cors: None,
                    ..(*ingress.policy).clone()
                };
                let backend = self.backend(&ingress.ingress, &rule.backend);
                added.push((
                    other,
                    Pending {
                        path: PathMatch::Prefix {
                            path: "/".into(),
                            element_wise: true,
                        },
                        target: RouteTarget {
                            ingress: ingress.ingress.clone(),
                            path: "/".into(),
                            backend,
                            canary: None,
                            policy: Arc::new(policy),
                        },
                    },
                ));
            }
        }
        for (name, pending) in added {
            hosts.entry(Some(name)).or_default().push(pending);
        }
    }

    fn problem(&self, ingress: &IngressRef, message: String) -> Problem {
        Problem {
            origin: self.origins.get(ingress).cloned().unwrap_or_default(),
            object: Some(ObjectRef {
                kind: "Ingress".into(),
                namespace: ingress.namespace.clone(),
                name: ingress.name.clone(),
            }),
            field: String::new(),
            message,
        }
    }

    fn warn(&mut self, ingress: &IngressRef, message: String) {
        let warning = self.problem(ingress, message);
        self.warnings.insert(warning);
    }

    fn conflict(&mut self, ingress: &IngressRef, message: String) {
        let conflict = self.problem(ingress, message);
        self.conflicts.insert(conflict);
    }

    fn hosts(&mut self, served: &[Arc<ParsedIngress>]) -> (Vec<VirtualHost>, VirtualHost) {
        let mut hosts: Hosts = BTreeMap::new();
        let mut owners: HashMap<(Option<String>, u8, String), IngressRef> = HashMap::new();
        for ingress in served.iter().filter(|i| i.canary.is_none()) {
            for rule in &ingress.rules {
                let key = (
                    rule.host.clone(),
                    tag(&rule.path),
                    rule.path.as_str().to_string(),
                );
                if let Some(owner) = owners.get(&key) {
                    let message = format!(
                        "host {} path {} is already served by Ingress {owner}",
                        host_label(&rule.host),
                        rule.path.as_str()
                    );
                    self.warn(&ingress.ingress, message.clone());
                    self.conflict(&ingress.ingress, message);
                    continue;
                }
                owners.insert(key, ingress.ingress.clone());
                let backend = self.backend(&ingress.ingress, &rule.backend);
                hosts.entry(rule.host.clone()).or_default().push(Pending {
                    path: rule.path.clone(),
                    target: RouteTarget {
                        ingress: ingress.ingress.clone(),
                        path: rule.path.as_str().to_string(),
                        backend,
                        canary: None,
                        policy: ingress.policy.clone(),
                    },
                });
            }
        }
        for ingress in served.iter().filter(|i| i.canary.is_some()) {
            self.attach_canary(ingress, &mut hosts);
        }
        self.www_redirects(served, &mut hosts);

        let mut named = Vec::new();
        let mut default_host = VirtualHost::default();
        for (host, mut pending) in hosts {
            force_regex(&mut pending);
            pending.sort_by(|a, b| {
                precedence(&a.path)
                    .cmp(&precedence(&b.path))
                    .then_with(|| a.path.as_str().cmp(b.path.as_str()))
            });
            let routes = pending
                .into_iter()
                .map(|p| Route {
                    path: p.path,
                    target: Arc::new(p.target),
                })
                .collect();
            match host {
                None => default_host.routes = routes,
                Some(h) => named.push(VirtualHost {
                    host: HostMatchOrAny(Some(host_match(&h))),
                    routes,
                    tls: false,
                    default_route: None,
                }),
            }
        }
        // The catch-all's default: the oldest rule-less Ingress's `defaultBackend`; a named
        // host's: the `defaultBackend` of the oldest Ingress with a rule for it (the one that
        // creates the server in ingress-nginx), if it has one. Later Ingresses cannot take
        // over either.
        let mut decided: Vec<bool> = vec![false; named.len()];
        for ingress in served.iter().filter(|i| i.canary.is_none()) {
            for (vh, done) in named.iter().zip(decided.iter_mut()) {
                let has_rule = ingress
                    .rules
                    .iter()
                    .any(|r| r.host.as_deref().map(host_match).as_ref() == vh.host.0.as_ref());
                if has_rule && !*done && ingress.default_backend.is_none() {
                    *done = true;
                }
            }
            let Some(service) = &ingress.default_backend else {
                continue;
            };
            let target = |this: &mut Self| {
                Arc::new(RouteTarget {
                    ingress: ingress.ingress.clone(),
                    path: "/".into(),
                    backend: this.backend(&ingress.ingress, service),
                    canary: None,
                    policy: ingress.policy.clone(),
                })
            };
            if default_host.default_route.is_none() && ingress.rules.is_empty() {
                default_host.default_route = Some(target(self));
            }
            for (vh, done) in named.iter_mut().zip(decided.iter_mut()) {
                let has_rule = ingress
                    .rules
                    .iter()
                    .any(|r| r.host.as_deref().map(host_match).as_ref() == vh.host.0.as_ref());
                if has_rule && !*done {
                    vh.default_route = Some(target(self));
                    *done = true;
                }
            }
        }
        // TLS hosts (a `spec.tls` entry without hosts is for the catch-all); only hosts the
        // Ingress has rules for, so no Ingress can put TLS on another's host.
        for ingress in served.iter().filter(|i| i.canary.is_none()) {
            for (tls_hosts, _) in &ingress.tls {
                if tls_hosts.is_empty() {
                    default_host.tls = true;
                }
                for h in tls_hosts.iter().filter(|h| has_rule_for(ingress, h)) {
                    let wanted = host_match(h);
                    for vh in named
                        .iter_mut()
                        .filter(|vh| vh.host.0.as_ref() == Some(&wanted))
                    {
                        vh.tls = true;
                    }
                }
            }
        }
        named.sort_by(|a, b| host_order(a.host.get()).cmp(&host_order(b.host.get())));
        (named, default_host)
    }

    fn attach_canary(&mut self, ingress: &ParsedIngress, hosts: &mut Hosts) {
        let Some(rule_set) = &ingress.canary else {
            return;
        };
        for rule in &ingress.rules {
            let found = hosts.get_mut(&rule.host).and_then(|routes| {
                routes
                    .iter_mut()
                    .find(|p| p.path.as_str() == rule.path.as_str())
            });
            let label = host_label(&rule.host);
            let path = rule.path.as_str();
            let Some(main) = found else {
                let message = format!(
                    "canary: host {label} path {path} is served by no other Ingress; ignored"
                );
                self.warn(&ingress.ingress, message);
                continue;
            };
            if let Some(other) = &main.target.canary {
                let message = format!(
                    "canary: host {label} path {path} already has canary Ingress {}; ignored",
                    other.ingress
                );
                self.warn(&ingress.ingress, message);
                continue;
            }
            let backend = self.backend(&ingress.ingress, &rule.backend);
            main.target.canary = Some(Canary {
                ingress: ingress.ingress.clone(),
                backend,
                rule: rule_set.clone(),
                policy: ingress.policy.clone(),
            });
        }
    }

    /// The Service port's endpoints from the L4 snapshot (its ClusterIP virtual services),
    /// one shared `Backend` per Service port. Unknown: no endpoints (503) and a warning.
    fn backend(&mut self, ingress: &IngressRef, service: &BackendService) -> Arc<Backend> {
        let (backend, found) = match self.backends.get(service) {
            Some(known) => known.clone(),
            None => {
                let (endpoints, found) = match resolve_headless(self.objects, service) {
                    Some(endpoints) => (endpoints, true),
                    None => resolve(self.services, service),
                };
                let backend = Arc::new(Backend {
                    service: service.clone(),
                    endpoints,
                });
                self.backends
                    .insert(service.clone(), (backend.clone(), found));
                (backend, found)
            }
        };
        if !found {
            let exists = self.objects.services.iter().any(|s| {
                s.object.metadata.name.as_deref() == Some(service.name.as_str())
                    && namespace_of(s.object.metadata.namespace.as_deref()) == service.namespace
            });
            let why = if exists {
                format!(
                    "Service {}/{} has no TCP port {} (or was refused)",
                    service.namespace, service.name, service.port
                )
            } else {
                format!("Service {}/{} not found", service.namespace, service.name)
            };
            self.warn(
                ingress,
                format!("backend {service}: {why}; requests get 503"),
            );
        }
        backend
    }
}

/// Endpoints (ready, or the serving terminating fallback: weight > 0) of a Service port, and
/// whether the port exists.
fn resolve(services: &Snapshot, wanted: &BackendService) -> (Vec<SocketAddr>, bool) {
    let mut found = false;
    let mut endpoints = Vec::new();
    for vs in &services.services {
        if vs.kind != FrontendKind::ClusterIp
            || vs.protocol != Protocol::Tcp
            || vs.service.namespace != wanted.namespace
            || vs.service.name != wanted.name
        {
            continue;
        }
        let port_matches = match (&wanted.port, vs.frontend) {
            (ServicePortRef::Name(n), _) => vs.service.port_name == *n,
            (ServicePortRef::Number(n), Frontend::Address { addr }) => addr.port() == *n,
            (ServicePortRef::Number(_), Frontend::NodePort { .. }) => false,
        };
        if !port_matches {
            continue;
        }
        found = true;
        endpoints.extend(
            vs.real_servers
                .iter()
                .filter(|rs| rs.weight > 0)
                .map(|rs| rs.addr),
        );
    }
    endpoints.sort();
    endpoints.dedup();
    (endpoints, found)
}

/// Endpoints of a headless Service's port (`clusterIP: None`), straight from its
/// EndpointSlices, since it has no virtual service: ready ones, or, with none ready, the
/// serving terminating ones. None when the Service is not headless or has no such port.
fn resolve_headless(objects: &ObjectSet, wanted: &BackendService) -> Option<Vec<SocketAddr>> {
    let service = objects.services.iter().map(|s| &s.object).find(|s| {
        s.metadata.name.as_deref() == Some(wanted.name.as_str())
            && namespace_of(s.metadata.namespace.as_deref()) == wanted.namespace
    })?;
    let spec = service.spec.as_ref()?;
    if spec.cluster_ip.as_deref() != Some("None") {
        return None;
    }
    let port = spec.ports.iter().flatten().find(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            && match &wanted.port {
                ServicePortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
                ServicePortRef::Number(n) => p.port == i32::from(*n),
            }
    })?;
    let port_name = port.name.as_deref().unwrap_or("");
    let numeric_target = match &port.target_port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
            u16::try_from(*n).ok()
        }
        None => u16::try_from(port.port).ok(),
        Some(_) => None,
    };
    let (mut ready, mut terminating) = (Vec::new(), Vec::new());
    for slice in objects.endpoint_slices.iter().map(|s| &s.object) {
        let owned = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if owned.map(String::as_str) != Some(wanted.name.as_str())
            || namespace_of(slice.metadata.namespace.as_deref()) != wanted.namespace
        {
            continue;
        }
        let target = match slice.ports.as_deref() {
            None | Some([]) => numeric_target,
            Some(ports) => ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok()),
        };
        let Some(target) = target.filter(|p| *p > 0) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let addr = SocketAddr::new(ip, target);
            if is_ready && !is_terminating {
                ready.push(addr);
            } else if is_serving && is_terminating {
                terminating.push(addr);
            }
        }
    }
    let mut endpoints = if ready.is_empty() { terminating } else { ready };
    endpoints.sort();
    endpoints.dedup();
    Some(endpoints)
}

/// Path kind for conflicts: the same host, kind and string is the same nginx location.
fn tag(path: &PathMatch) -> u8 {
    match path {
        PathMatch::Exact(_) => 0,
        PathMatch::Prefix {
            element_wise: true, ..
        } => 1,
        PathMatch::Prefix {
            element_wise: false,
            ..
        } => 2,
        PathMatch::Regex(_) => 3,
    }
}

/// Route order: Exact first, then longest path first, Prefix before regex at equal length
/// (then by path, so the order does not depend on the rules' order).
fn precedence(path: &PathMatch) -> (u8, std::cmp::Reverse<usize>, u8) {
    let len = std::cmp::Reverse(path.as_str().len());
    match path {
        PathMatch::Exact(_) => (0, len, 0),
        PathMatch::Prefix { .. } => (1, len, 0),
        PathMatch::Regex(_) => (1, len, 1),
    }
}

/// ingress-nginx: when any path of a host is a regex, all its locations are; prefixes
/// become `^<escaped>` (element-wise ones `^<escaped>(/|$)`); Exact stays exact.
fn force_regex(routes: &mut [Pending]) {
    if !routes.iter().any(|p| matches!(p.path, PathMatch::Regex(_))) {
        return;
    }
    for route in routes {
        if let PathMatch::Prefix { path, element_wise } = &route.path {
            let regex = if *element_wise {
                let trimmed = path.trim_end_matches('/');
                if trimmed.is_empty() {
                    "/".to_string()
                } else {
                    format!("{}(/|$)", regex::escape(trimmed))
                }
            } else {
                regex::escape(path)
            };
            if let Ok(r) = regex_path(path, &regex) {
                route.path = PathMatch::Regex(r);
            }
        }
    }
}

fn host_match(host: &str) -> HostMatch {
    match host.strip_prefix('*') {
        Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
        None => HostMatch::Exact(host.to_string()),
    }
}

fn host_label(host: &Option<String>) -> &str {
    host.as_deref().unwrap_or("_")
}

/// Exact hosts first (sorted), then wildcards, longest suffix first.
fn host_order(host: &HostMatch) -> (u8, std::cmp::Reverse<usize>, &str) {
    match host {
        HostMatch::Exact(h) => (0, std::cmp::Reverse(0), h),
        HostMatch::Wildcard(s) => (1, std::cmp::Reverse(s.len()), s),
        HostMatch::Any => (2, std::cmp::Reverse(0), ""),
    }
}

/// Whether the Ingress has a rule for `host` (exact spelling, wildcards included).
fn has_rule_for(ingress: &ParsedIngress, host: &str) -> bool {
    ingress
        .rules
        .iter()
        .any(|r| r.host.as_deref() == Some(host))
}

/// One certificate per Secret, for every host that lists it; the PEM from the current
/// Secret, or (an Ingress kept at its last good version) the previous snapshot's.
fn certificates(
    served: &[Arc<ParsedIngress>],
    objects: &ObjectSet,
    previous: Option<&IngressSnapshot>,
) -> Vec<Arc<Certificate>> {
    let mut by_secret: BTreeMap<ObjectRef, BTreeSet<String>> = BTreeMap::new();
    // A host's certificate comes from the oldest Ingress that has a rule for it and lists it
    // in `spec.tls` (as ingress-nginx decides): another namespace cannot replace it.
    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    for ingress in served.iter().filter(|i| i.canary.is_none()) {
        for (hosts, secret) in &ingress.tls {
            if secret.is_empty() {
                continue;
            }
            let key = ObjectRef {
                kind: "Secret".into(),
                namespace: ingress.ingress.namespace.clone(),
                name: secret.clone(),
            };
            for host in hosts {
                if has_rule_for(ingress, host) && claimed.insert(host.as_str()) {
                    by_secret
                        .entry(key.clone())
                        .or_default()
                        .insert(host.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (secret, hosts) in by_secret {
        let pem = tls_secret(&objects.secrets, &secret.namespace, &secret.name)
            .ok()
            .or_else(|| {
                previous
                    .and_then(|p| p.certificates.iter().find(|c| c.secret == secret))
                    .map(|c| (c.cert_pem.clone(), c.key_pem.clone()))
            });
        if let Some((cert_pem, key_pem)) = pem {
            out.push(Arc::new(Certificate {
                secret,
                hosts: hosts.into_iter().collect(),
                cert_pem,
                key_pem,
            }));
        }
    }
    out
}

/// A stable hash of what was parsed (not the endpoints).
fn config_hash(
    served: &[Arc<ParsedIngress>],
    settings: &GlobalSettings,
    certificates: &[Arc<Certificate>],
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{served:?}").hash(&mut hasher);
    format!("{settings:?}").hash(&mut hasher);
    for c in certificates {
        c.secret.hash(&mut hasher);
        c.hosts.hash(&mut hasher);
        c.cert_pem.hash(&mut hasher);
        c.key_pem.hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(parse_host("Foo.Example.COM"), Ok("foo.example.com".into()));
        assert_eq!(parse_host("*.example.com"), Ok("*.example.com".into()));
        for bad in [
            "*", "*.", "a.*.com", "*foo.com", "foo..com", "-a.com", "a b.com", "a:80",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            host_match("*.example.com"),
            HostMatch::Wildcard(".example.com".into())
        );
        assert_eq!(host_match("a.com"), HostMatch::Exact("a.com".into()));
    }

    fn pending(path: PathMatch) -> Pending {
        Pending {
            path,
            target: RouteTarget {
                ingress: IngressRef {
                    namespace: "default".into(),
                    name: "x".into(),
                },
                path: String::new(),
                backend: Arc::new(Backend {
                    service: BackendService {
                        namespace: "default".into(),
                        name: "x".into(),
                        port: ServicePortRef::Number(80),
                    },
                    endpoints: Vec::new(),
                }),
                canary: None,
                policy: Arc::new(RoutePolicy::default()),
            },
        }
    }

    fn prefix(p: &str, element_wise: bool) -> PathMatch {
        PathMatch::Prefix {
            path: p.into(),
            element_wise,
        }
    }

    #[test]
    fn precedence_order() {
        let regex = |p: &str| PathMatch::Regex(regex_path(p, p).unwrap());
        let mut routes = [
            pending(prefix("/", true)),
            pending(regex("/abc")),
            pending(prefix("/abc", true)),
            pending(PathMatch::Exact("/a".into())),
            pending(prefix("/abcdef", false)),
            pending(PathMatch::Exact("/abcdefgh".into())),
        ];
        routes.sort_by_key(|p| precedence(&p.path));
        let order: Vec<(u8, &str)> = routes
            .iter()
            .map(|p| (tag(&p.path), p.path.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (0, "/abcdefgh"),
                (0, "/a"),
                (2, "/abcdef"),
                (1, "/abc"),
                (3, "/abc"),
                (1, "/"),
            ]
        );
    }

    #[test]
    fn forced_regexes() {
        let mut routes = vec![
            pending(PathMatch::Regex(regex_path("/api/.*", "/api/.*").unwrap())),
            pending(prefix("/foo", true)),
            pending(prefix("/bar/", true)),
            pending(prefix("/", true)),
            pending(prefix("/a.b", false)),
            pending(PathMatch::Exact("/exact".into())),
        ];
        force_regex(&mut routes);
        let m = |i: usize, path: &str| routes[i].path.matches(path);
        assert!(routes[..5]
            .iter()
            .all(|p| matches!(p.path, PathMatch::Regex(_))));
        assert!(matches!(routes[5].path, PathMatch::Exact(_)));
        // The written path stays the label.
        assert_eq!(routes[1].path.as_str(), "/foo");
        assert!(m(1, "/foo") && m(1, "/foo/") && m(1, "/FOO/bar") && !m(1, "/foobar"));
        assert!(m(2, "/bar") && m(2, "/bar/x") && !m(2, "/barx"));
        assert!(m(3, "/") && m(3, "/anything"));
        assert!(m(4, "/a.bc") && !m(4, "/axb"));
        assert!(m(5, "/exact") && !m(5, "/EXACT"));

        // No regex on the host: nothing changes.
        let mut plain = vec![pending(prefix("/foo", true))];
        force_regex(&mut plain);
        assert!(matches!(plain[0].path, PathMatch::Prefix { .. }));
    }

    #[test]
    fn bad_regex_names_the_error() {
        let err = regex_path("/(", "/(").unwrap_err();
        assert!(
            err.starts_with("\"/(\" is not a valid regular expression: "),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
