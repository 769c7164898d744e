//! The servers the load bench's sections compare: quota-proxy on each
//! store and nginx, in front of one upstream.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use super::procs::{self, NginxProcess, ProxyProcess, RedisProcess};
use super::redis_info;
use super::runner::Subject;
use super::scenarios::{self, StoreSpec, Target};

/// What every section starts its servers from.
pub struct Servers<'a> {
    /// The quota-proxy binary.
    pub binary: &'a Path,
    /// Where the upstream listens.
    pub upstream: SocketAddr,
    /// The Redis the proxies on Redis use, when there is one.
    pub redis: Option<&'a RedisProcess>,
    /// nginx's binary, unless it is missing or skipped.
    pub nginx: Option<&'a Path>,
}

impl Servers<'_> {
    /// quota-proxy on `store` with `threads` serving threads, its files in
    /// `dir`.
    pub fn proxy(
        &self,
        dir: &Path,
        name: &str,
        store: &StoreSpec,
        threads: usize,
    ) -> io::Result<ProxyProcess> {
        ProxyProcess::start(self.binary, dir, name, Some(threads), |port| {
            scenarios::proxy_config(port, self.upstream, store)
        })
    }

    /// nginx with `threads` workers able to hold `clients` connections, and
    /// quota-proxy with `threads` serving threads on the memory store and on
    /// Redis, each when it is there; their files in `dir`.
    pub fn proxies(&self, dir: &Path, threads: usize, clients: usize) -> io::Result<Proxies> {
        let nginx = match self.nginx {
            Some(binary) => Some(NginxProcess::start(
                binary,
                dir,
                self.upstream,
                threads,
                clients,
            )?),
            None => None,
        };
        let memory = self.proxy(dir, "qp-memory", &StoreSpec::Memory, threads)?;
        let on_redis = match self.redis {
            Some(redis) => Some((
                self.proxy(dir, "qp-redis", &StoreSpec::Redis(redis.url()), threads)?,
                redis.port(),
                redis.pid(),
            )),
            None => None,
        };
        Ok(Proxies {
            nginx,
            memory,
            on_redis,
        })
    }
}

/// The servers a section compares, stopped when dropped.
pub struct Proxies {
    /// nginx, when it runs.
    pub nginx: Option<NginxProcess>,
    /// quota-proxy on the memory store.
    pub memory: ProxyProcess,
    /// quota-proxy on Redis, with its Redis's port and pid.
    pub on_redis: Option<(ProxyProcess, u16, u32)>,
}

impl Proxies {
    /// nginx (all its processes' CPU), qp-memory and qp-redis (with what
    /// its Redis runs), those that run.
    pub fn subjects(&self) -> Vec<Subject> {
        let mut subjects = Vec::new();
        if let Some(nginx) = &self.nginx {
            let pids = nginx.pids();
            subjects.push(Subject {
                target: Target::Nginx,
                addr: nginx.addr(),
                cpu: Box::new(move || {
                    pids.iter()
                        .map(|&pid| procs::cpu_seconds(pid).unwrap_or(f64::NAN))
                        .sum()
                }),
                redis_calls: None,
            });
        }
        subjects.push(one_process(
            Target::Memory,
            self.memory.addr(),
            self.memory.pid(),
        ));
        if let Some((proxy, port, redis_pid)) = &self.on_redis {
            let (port, redis_pid) = (*port, *redis_pid);
            subjects.push(Subject {
                redis_calls: Some(Box::new(move || {
                    (
                        redis_info::redis_calls(port).unwrap_or_default(),
                        procs::cpu_seconds(redis_pid).unwrap_or(f64::NAN),
                    )
                })),
                ..one_process(Target::Redis, proxy.addr(), proxy.pid())
            });
        }
        subjects
    }
}

/// A server that is one process, its CPU read from `/proc/<pid>`.
pub fn one_process(target: Target, addr: SocketAddr, pid: u32) -> Subject {
    Subject {
        target,
        addr,
        cpu: Box::new(move || procs::cpu_seconds(pid).unwrap_or(f64::NAN)),
        redis_calls: None,
    }
}
