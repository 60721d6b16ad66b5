//! The replicated objects the local API serves, built from the `Replicate` scopes: the two
//! gauge tables, the shared named throttles and the named caches. They work without
//! replication too (then every figure is this node's own), so local programs never have
//! to care whether the cluster key is configured.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::protocol::{ApiError, ErrorKind, Request, Response};
use crate::{
    config::{Config, ReplicateKind},
    console::ConsoleError,
    daemon::Services,
    inbound::parse_cidr,
    replicate::{
        INBOUND_CIDR, OUTBOUND_CIDR, ReplicationHandle, Sink,
        cache::Cache,
        gauge::{self, GaugeTable, OUTBOUND_BINDING_DOMAINS, OUTBOUND_DOMAINS},
        inbound::tree_of,
        throttle::{SHARED_NAMED_THROTTLES, Throttles},
    },
};

/// A gauge step: at least 1 (default 1).
fn count(n: Option<i64>) -> Result<i64, ApiError> {
    match n.unwrap_or(1) {
        n if n >= 1 => Ok(n),
        n => Err(ApiError::new(
            ErrorKind::Invalid,
            format!("n must be at least 1 (got {n})"),
        )),
    }
}

/// The objects, shared by clone.
#[derive(Clone, Debug)]
pub struct SharedObjects {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodename: String,
    repl: Option<ReplicationHandle>,
    gauges: BTreeMap<String, Arc<GaugeTable>>,
    throttles: Throttles,
    caches: BTreeMap<String, Arc<Cache>>,
}

impl SharedObjects {
    /// `repl`: the running replication (objects it replicates publish their slots there).
    pub fn new(cfg: &Config, nodename: &str, repl: Option<ReplicationHandle>) -> Self {
        let replicated = |name: &str| {
            repl.as_ref()
                .filter(|r| r.objects().iter().any(|o| o == name))
                .cloned()
        };
        let gauges = [OUTBOUND_DOMAINS, OUTBOUND_BINDING_DOMAINS]
            .into_iter()
            .map(|n| (n.to_owned(), Arc::new(GaugeTable::new(n, replicated(n)))))
            .collect();
        let caches = cfg
            .cluster
            .replicate
            .iter()
            .filter(|r| r.kind == ReplicateKind::Cache)
            .map(|r| {
                let snapshot = r
                    .parameters
                    .iter()
                    .any(|p| p.trim().eq_ignore_ascii_case("snapshot"));
                (
                    r.name.clone(),
                    Cache::new(&r.name, nodename, snapshot, r.max_size, replicated(&r.name)),
                )
            })
            .collect();
        SharedObjects {
            inner: Arc::new(Inner {
                nodename: nodename.to_owned(),
                throttles: Throttles::new(replicated(SHARED_NAMED_THROTTLES)),
                repl,
                gauges,
                caches,
            }),
        }
    }

    /// The replication sinks (caches merge what peers hold); add them to the service
    /// before the engine starts.
    pub fn sinks(&self) -> Vec<(String, Sink)> {
        self.inner
            .caches
            .values()
            .map(|c| (c.name().to_owned(), c.sink()))
            .collect()
    }

    pub fn gauge(&self, table: &str) -> Option<&Arc<GaugeTable>> {
        self.inner.gauges.get(table)
    }

    pub fn cache(&self, name: &str) -> Option<&Arc<Cache>> {
        self.inner.caches.get(name)
    }

    pub fn throttles(&self) -> &Throttles {
        &self.inner.throttles
    }

    /// Answers one request (never panics, never blocks beyond brief locks).
    pub fn handle(&self, req: Request) -> Response {
        self.dispatch(req).unwrap_or_else(Response::from)
    }

    fn gauge_or(&self, table: &str) -> Result<&Arc<GaugeTable>, ApiError> {
        self.gauge(table).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unknown,
                format!("no gauge table '{table}' (outbound_domains, outbound_binding_domains)"),
            )
        })
    }

    fn cache_or(&self, name: &str) -> Result<&Arc<Cache>, ApiError> {
        self.cache(name).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unknown,
                crate::replicate::cache::CacheError::Unknown {
                    name: name.to_owned(),
                }
                .to_string(),
            )
        })
    }

    fn dispatch(&self, req: Request) -> Result<Response, ApiError> {
        let invalid = |e: &dyn std::fmt::Display| ApiError::new(ErrorKind::Invalid, e.to_string());
        Ok(match req {
            Request::Ping => Response {
                node: Some(self.inner.nodename.clone()),
                ..Response::ok()
            },
            Request::GaugeInc { table, key, n } => {
                let g = self.gauge_or(&table)?;
                let local = g.add(&key, count(n)?).map_err(|e| invalid(&e))?;
                Response {
                    local: Some(local),
                    cluster: Some(g.cluster(&key).map_err(|e| invalid(&e))?),
                    ..Response::ok()
                }
            }
            Request::GaugeDec { table, key, n } => {
                let g = self.gauge_or(&table)?;
                let local = g.add(&key, -count(n)?).map_err(|e| invalid(&e))?;
                Response {
                    local: Some(local),
                    cluster: Some(g.cluster(&key).map_err(|e| invalid(&e))?),
                    ..Response::ok()
                }
            }
            Request::GaugeGet { table, key } => {
                let g = self.gauge_or(&table)?;
                Response {
                    local: Some(g.local(&key).map_err(|e| invalid(&e))?),
                    cluster: Some(g.cluster(&key).map_err(|e| invalid(&e))?),
                    ..Response::ok()
                }
            }
            Request::ThrottleCreate {
                name,
                rate,
                epsilon,
            } => {
                self.inner
                    .throttles
                    .create(&name, &rate, epsilon)
                    .map_err(|e| invalid(&e))?;
                Response::ok()
            }
            Request::ThrottleCheck { name } => self.throttle(&name, 1, false)?,
            Request::ThrottleConsume { name, n } => self.throttle(&name, n.unwrap_or(1), true)?,
            Request::CacheGet { cache, key } => {
                let value = self.cache_or(&cache)?.get(&key);
                Response {
                    found: Some(value.is_some()),
                    value,
                    ..Response::ok()
                }
            }
            Request::CacheSet {
                cache,
                key,
                value,
                ttl,
            } => {
                self.cache_or(&cache)?
                    .set(&key, &value, ttl.as_deref().unwrap_or("0"))
                    .map_err(|e| invalid(&e))?;
                Response::ok()
            }
            Request::CacheDelete { cache, key } => {
                let deleted = self
                    .cache_or(&cache)?
                    .delete(&key)
                    .map_err(|e| invalid(&e))?;
                Response {
                    deleted: Some(deleted),
                    ..Response::ok()
                }
            }
            Request::InboundCount { cidr, addr } => Response {
                count: Some(self.tree_count(INBOUND_CIDR, &cidr, addr.as_deref())?),
                ..Response::ok()
            },
            Request::OutboundCidrCount { cidr, addr } => Response {
                count: Some(self.tree_count(OUTBOUND_CIDR, &cidr, addr.as_deref())?),
                ..Response::ok()
            },
            Request::OutboundCount { domain } => {
                let g = self.gauge_or(OUTBOUND_DOMAINS)?;
                let c = g.cluster(&domain).map_err(|e| invalid(&e))?;
                Response {
                    count: Some(c.max(0) as u64),
                    ..Response::ok()
                }
            }
        })
    }

    fn throttle(&self, name: &str, n: u64, commit: bool) -> Result<Response, ApiError> {
        let o = self.inner.throttles.request(name, n, commit).map_err(|e| {
            let kind = match e {
                crate::replicate::throttle::ThrottleError::Unknown { .. } => ErrorKind::Unknown,
                _ => ErrorKind::Invalid,
            };
            ApiError::new(kind, e.to_string())
        })?;
        Ok(Response {
            allowed: Some(o.allowed),
            remaining: Some(o.remaining),
            local: Some(i64::try_from(o.local).unwrap_or(i64::MAX)),
            ..Response::ok()
        })
    }

    /// Momentum's `audit_service "inbound_cidr" "/24"` against the cluster-wide tree of a
    /// CIDR-tree object (`inbound_cidr`, `outbound_cidr`).
    fn tree_count(&self, object: &str, cidr: &str, addr: Option<&str>) -> Result<u64, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorKind::Invalid, m);
        let tree = self
            .inner
            .repl
            .as_ref()
            .and_then(|r| r.global(object))
            .map(|g| tree_of(&g))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{object} is not replicated on this node (Replicate \"{object}\" {{}} and a cluster key are needed)"
                    ),
                )
            })?;
        let cidr = cidr.trim();
        if let Some(len) = cidr.strip_prefix('/') {
            let len: u8 = len
                .parse()
                .map_err(|_| invalid(format!("bad prefix length in '{cidr}'")))?;
            let addr = addr
                .ok_or_else(|| invalid(format!("'{cidr}' is relative to an address: give addr")))?;
            let ip: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| invalid(format!("'{addr}' is not an IP address")))?;
            return tree
                .count_around(ip, len)
                .map_err(|e| invalid(e.to_string()));
        }
        let net = parse_cidr(cidr).map_err(|e| invalid(e.to_string()))?;
        Ok(tree.count_within(&net))
    }

    /// One `cluster info` line per cache and a throttle count (evictions are only
    /// visible here and in the local API's answers).
    pub fn render_info(&self) -> String {
        let mut out = format!(
            "Local API: {} shared throttles, {} caches",
            self.inner.throttles.list().len(),
            self.inner.caches.len()
        );
        for (name, c) in &self.inner.caches {
            let st = c.stats();
            out.push_str(&format!(
                "\n  cache {name}: {} entries, {} evicted (max_size), {} expired, {} older than this node ignored",
                st.entries, st.evicted, st.expired, st.skipped_old
            ));
        }
        out
    }

    /// `cluster shared show outbound_domains [from NODE]` (and the binding table) for the
    /// replicated gauge tables, and the `cluster info` section.
    pub fn register_console(&self, services: &Services) {
        let me = self.clone();
        services
            .info
            .set_section("localapi", Arc::new(move || me.render_info()));
        for (name, g) in &self.inner.gauges {
            let Some(repl) = self.inner.repl.clone() else {
                return;
            };
            if !repl.objects().iter().any(|o| o == name) {
                continue;
            }
            let (g, name2) = (Arc::clone(g), name.clone());
            let usage = format!("cluster shared show {name} [from NODE]");
            let res = services.console.register(
                &["cluster", "shared", "show", name],
                &format!("{usage}: the cluster-wide gauge table, or one node's slot"),
                Arc::new(move |args| match args {
                    [] => Ok(gauge::render(&name2, "global", &g.totals())),
                    [f, node] if f.eq_ignore_ascii_case("from") => {
                        let slot = g.slot(node).ok_or_else(|| ConsoleError::Failed {
                            message: format!(
                                "no {name2} slot from node '{node}' (not in the cluster view or not connected; see 'cluster membership')"
                            ),
                        })?;
                        let view = repl.private_name(node).unwrap_or_else(|| (*node).to_owned());
                        Ok(gauge::render(&name2, &view, &slot))
                    }
                    _ => Err(ConsoleError::Usage {
                        usage: usage.clone(),
                    }),
                }),
            );
            if let Err(e) = res {
                tracing::warn!(error = %e, "local API: cannot register a cluster shared command");
            }
        }
    }
}
