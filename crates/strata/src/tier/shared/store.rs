//! The servers behind the shared tier, through their client crates (`memcache`,
//! `redis`): several memcached or Redis servers spread by consistent hashing, or one
//! Redis Cluster, which routes keys itself. Every request has a deadline; every server
//! a circuit breaker, so a dead or frozen one costs a few timeouts and then nothing
//! (its share of the keys misses) until a probe finds it back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// A request that did not get an answer.
#[derive(Debug)]
pub enum StoreError {
    /// No answer within the deadline (a slow or frozen server).
    Timeout,
    /// Refused, reset, unreachable, or an answer that made no sense.
    Failed(String),
    /// The server's breaker is open: not asked at all.
    Open,
}

impl StoreError {
    fn of_io(e: &std::io::Error) -> StoreError {
        use std::io::ErrorKind::*;
        match e.kind() {
            TimedOut | WouldBlock => StoreError::Timeout,
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

type Res<T> = Result<T, StoreError>;

/// One server (or a whole Redis Cluster), as the tier uses it.
trait Server: Send + Sync {
    /// The values under `keys`, in order (None: not there).
    fn get_many(&self, keys: &[&str]) -> Res<Vec<Option<Vec<u8>>>>;
    /// Stores every pair: a pipeline on Redis (one round trip for a run); one
    /// request each on memcached, stopping at the first failure.
    fn set_many(&self, items: &[(&str, &[u8])]) -> Res<()>;
    /// Stores only if the key is absent, expiring after `ttl`: true if stored.
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Res<bool>;
    fn delete(&self, key: &str) -> Res<()>;
}

/// Connections to one server, made when needed; one that failed is dropped, never
/// reused (an answer arriving after its deadline would be read as the next one's).
struct Pool<C> {
    idle: Mutex<Vec<C>>,
    make: Box<dyn Fn() -> Res<C> + Send + Sync>,
}

impl<C> Pool<C> {
    fn new(make: impl Fn() -> Res<C> + Send + Sync + 'static) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            make: Box::new(make),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut C) -> Res<R>) -> Res<R> {
        let got = self.idle.lock().pop();
        let mut c = match got {
            Some(c) => c,
            None => (self.make)()?,
        };
        let r = f(&mut c)?;
        let mut idle = self.idle.lock();
        if idle.len() < 32 {
            idle.push(c);
        }
        Ok(r)
    }
}

struct Memcached {
    pool: Pool<memcache::Client>,
}

fn mc_err(e: memcache::MemcacheError) -> StoreError {
    match e {
        memcache::MemcacheError::IOError(e) => StoreError::of_io(&e),
        e => StoreError::Failed(e.to_string()),
    }
}

impl Memcached {
    fn new(
        url: &str,
        timeout: Duration,
        threads: Arc<scheduled_thread_pool::ScheduledThreadPool>,
    ) -> Res<Self> {
        let url = memcache::Url::parse(&url.replacen("memcached://", "memcache://", 1))
            .map_err(|e| StoreError::Failed(format!("{url}: {e}")))?;
        let make = move || {
            // One connection per client: a connection that failed goes with its client.
            let pool = r2d2::Pool::builder()
                .max_size(1)
                .min_idle(Some(0))
                .test_on_check_out(false)
                .connection_timeout(timeout)
                .thread_pool(threads.clone())
                .build_unchecked(memcache::ConnectionManager::new(url.clone()));
            let c = memcache::Client::with_pool(pool).map_err(mc_err)?;
            // Connects.
            c.set_read_timeout(Some(timeout)).map_err(mc_err)?;
            c.set_write_timeout(Some(timeout)).map_err(mc_err)?;
            Ok(c)
        };
        Ok(Self {
            pool: Pool::new(make),
        })
    }
}

impl Server for Memcached {
    fn get_many(&self, keys: &[&str]) -> Res<Vec<Option<Vec<u8>>>> {
        let mut m = self
            .pool
            .with(|c| c.gets::<Vec<u8>>(keys).map_err(mc_err))?;
        Ok(keys.iter().map(|k| m.remove(*k)).collect())
    }
    fn set_many(&self, items: &[(&str, &[u8])]) -> Res<()> {
        // The memcache crate has no multi-set.
        self.pool.with(|c| {
            items
                .iter()
                .try_for_each(|(k, v)| c.set(k, *v, 0).map_err(mc_err))
        })
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Res<bool> {
        // memcached counts expiry in whole seconds.
        let secs = ttl.as_secs().max(1) as u32;
        self.pool.with(|c| match c.add(key, value, secs) {
            Ok(()) => Ok(true),
            Err(memcache::MemcacheError::CommandError(memcache::CommandError::KeyExists)) => {
                Ok(false)
            }
            // The ASCII protocol says NOT_STORED.
            Err(memcache::MemcacheError::ServerError(_)) => Ok(false),
            Err(e) => Err(mc_err(e)),
        })
    }
    fn delete(&self, key: &str) -> Res<()> {
        self.pool
            .with(|c| c.delete(key).map(|_| ()).map_err(mc_err))
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Failed(e.to_string())
    }
}

/// SET NX PX and DEL, alike on a Redis server and a Redis Cluster.
fn redis_add(
    c: &mut impl redis::ConnectionLike,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Res<bool> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query::<Option<String>>(c)
        .map(|r| r.is_some())
        .map_err(redis_err)
}

fn redis_delete(c: &mut impl redis::ConnectionLike, key: &str) -> Res<()> {
    redis::cmd("DEL").arg(key).query::<()>(c).map_err(redis_err)
}

struct Redis {
    pool: Pool<redis::Connection>,
}

impl Redis {
    fn new(url: &str, timeout: Duration) -> Res<Self> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Failed(format!("{url}: {e}")))?;
        let make = move || {
            let c = client
                .get_connection_with_timeout(timeout)
                .map_err(redis_err)?;
            c.set_read_timeout(Some(timeout)).map_err(redis_err)?;
            c.set_write_timeout(Some(timeout)).map_err(redis_err)?;
            Ok(c)
        };
        Ok(Self {
            pool: Pool::new(make),
        })
    }
}

impl Server for Redis {
    fn get_many(&self, keys: &[&str]) -> Res<Vec<Option<Vec<u8>>>> {
        self.pool.with(|c| {
            redis::cmd("MGET")
                .arg(keys)
                .query::<Vec<Option<Vec<u8>>>>(c)
                .map_err(redis_err)
        })
    }
    fn set_many(&self, items: &[(&str, &[u8])]) -> Res<()> {
        self.pool.with(|c| {
            let mut p = redis::pipe();
            for (k, v) in items {
                p.set(*k, *v).ignore();
            }
            p.query::<()>(c).map_err(redis_err)
        })
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Res<bool> {
        self.pool.with(|c| redis_add(c, key, value, ttl))
    }
    fn delete(&self, key: &str) -> Res<()> {
        self.pool.with(|c| redis_delete(c, key))
    }
}

struct RedisCluster {
    pool: Pool<redis::cluster::ClusterConnection>,
}

impl RedisCluster {
    fn new(urls: &[String], timeout: Duration) -> Res<Self> {
        let nodes: Vec<String> = urls
            .iter()
            .map(|u| u.replacen("redis+cluster://", "redis://", 1))
            .collect();
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .map_err(|e| StoreError::Failed(format!("Redis Cluster: {e}")))?;
        Ok(Self {
            pool: Pool::new(move || client.get_connection().map_err(redis_err)),
        })
    }
}

impl Server for RedisCluster {
    fn get_many(&self, keys: &[&str]) -> Res<Vec<Option<Vec<u8>>>> {
        // Keys of one run fall in many slots: one GET each, pipelined per node.
        self.pool.with(|c| {
            let mut p = redis::cluster::cluster_pipe();
            for k in keys {
                p.get(*k);
            }
            p.query::<Vec<Option<Vec<u8>>>>(c).map_err(redis_err)
        })
    }
    fn set_many(&self, items: &[(&str, &[u8])]) -> Res<()> {
        self.pool.with(|c| {
            let mut p = redis::cluster::cluster_pipe();
            for (k, v) in items {
                p.set(*k, *v).ignore();
            }
            p.query::<()>(c).map_err(redis_err)
        })
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Res<bool> {
        self.pool.with(|c| redis_add(c, key, value, ttl))
    }
    fn delete(&self, key: &str) -> Res<()> {
        self.pool.with(|c| redis_delete(c, key))
    }
}

/// Stops asking a server that keeps failing: after `TRIPS` failures in a row it is
/// left alone for a pause (1 s, doubling to 30 s), then one request probes it.
struct Breaker {
    st: Mutex<BreakerState>,
}

struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    pause: Duration,
}

const TRIPS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

impl Breaker {
    fn new() -> Self {
        Self {
            st: Mutex::new(BreakerState {
                failures: 0,
                open_until: None,
                probing: false,
                pause: FIRST_PAUSE,
            }),
        }
    }

    fn allow(&self) -> bool {
        let mut st = self.st.lock();
        match st.open_until {
            None => true,
            Some(t) if Instant::now() < t || st.probing => false,
            Some(_) => {
                st.probing = true;
                true
            }
        }
    }

    /// Open and not yet due for a probe.
    fn is_open(&self) -> bool {
        let st = self.st.lock();
        st.open_until.is_some_and(|t| Instant::now() < t)
    }

    fn success(&self) {
        let mut st = self.st.lock();
        if st.failures != 0 || st.open_until.is_some() {
            if st.open_until.is_some() {
                tracing::info!("shared cache server answers again");
            }
            *st = BreakerState {
                failures: 0,
                open_until: None,
                probing: false,
                pause: FIRST_PAUSE,
            };
        }
    }

    /// True when this failure opened the breaker.
    fn failure(&self) -> bool {
        let mut st = self.st.lock();
        st.failures += 1;
        if st.probing || (st.open_until.is_none() && st.failures >= TRIPS) {
            let pause = st.pause;
            st.open_until = Some(Instant::now() + pause);
            st.pause = (pause * 2).min(LONGEST_PAUSE);
            st.probing = false;
            return true;
        }
        false
    }
}

struct Node {
    name: String,
    server: Box<dyn Server>,
    breaker: Breaker,
}

/// Points per server on the hash ring: enough for an even spread of keys.
const POINTS: u32 = 160;

/// Every server of the tier, and which one holds a key.
pub struct Store {
    nodes: Vec<Node>,
    /// (point, node), sorted by point.
    ring: Vec<(u64, usize)>,
}

fn hash64(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Store {
    /// From `memcached://host:port`, `redis://host:port` (several: spread by
    /// consistent hashing) or `redis+cluster://host:port` URLs (one cluster, any of
    /// its nodes). Nothing is connected yet: a server that is down now costs misses,
    /// never the mount.
    pub fn open(urls: &[String], timeout: Duration) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no shared cache servers given".into());
        }
        let scheme = |u: &str| u.split("://").next().unwrap_or("").to_string();
        let first = scheme(&urls[0]);
        if urls
            .iter()
            .any(|u| scheme(u) != first || !u.contains("://"))
        {
            return Err(format!(
                "shared cache URLs must all be of one kind (memcached://, redis:// or redis+cluster://): {}",
                urls.join(",")
            ));
        }
        let err = |e: StoreError| format!("{e:?}");
        let mut nodes = Vec::new();
        match first.as_str() {
            "memcached" | "memcache" => {
                let threads = Arc::new(scheduled_thread_pool::ScheduledThreadPool::new(1));
                for u in urls {
                    nodes.push(Node {
                        name: u.clone(),
                        server: Box::new(Memcached::new(u, timeout, threads.clone()).map_err(err)?),
                        breaker: Breaker::new(),
                    });
                }
            }
            "redis" => {
                for u in urls {
                    nodes.push(Node {
                        name: u.clone(),
                        server: Box::new(Redis::new(u, timeout).map_err(err)?),
                        breaker: Breaker::new(),
                    });
                }
            }
            "redis+cluster" => nodes.push(Node {
                name: urls.join(","),
                server: Box::new(RedisCluster::new(urls, timeout).map_err(err)?),
                breaker: Breaker::new(),
            }),
            other => {
                return Err(format!(
                    "unknown shared cache kind {other:?}: use memcached://, redis:// or redis+cluster://"
                ));
            }
        }
        let mut ring = Vec::with_capacity(nodes.len() * POINTS as usize);
        for (i, n) in nodes.iter().enumerate() {
            for p in 0..POINTS {
                ring.push((hash64(format!("{}#{p}", n.name).as_bytes()), i));
            }
        }
        ring.sort_unstable();
        Ok(Self { nodes, ring })
    }

    /// The node that holds `key`: the first ring point at or after its hash. Adding
    /// or losing a server moves only the keys of its points. A server whose breaker
    /// is open is passed over for the next one on the ring, as memcached clients do
    /// (its keys live elsewhere until it is back; every machine whose breaker saw the
    /// same failure moves them the same way).
    fn node_of(&self, key: &str) -> usize {
        if self.nodes.len() == 1 {
            return 0;
        }
        let h = hash64(key.as_bytes());
        let i = self.ring.partition_point(|&(p, _)| p < h);
        let first = self.ring[i % self.ring.len()].1;
        (0..self.ring.len())
            .map(|k| self.ring[(i + k) % self.ring.len()].1)
            .find(|&n| !self.nodes[n].breaker.is_open())
            .unwrap_or(first)
    }

    /// Runs `f` on `node` through its breaker.
    fn call<R>(&self, node: usize, f: impl FnOnce(&dyn Server) -> Res<R>) -> Res<R> {
        let n = &self.nodes[node];
        if !n.breaker.allow() {
            return Err(StoreError::Open);
        }
        let r = f(n.server.as_ref());
        match &r {
            Ok(_) => n.breaker.success(),
            Err(e) => {
                if n.breaker.failure() {
                    tracing::warn!(server = %n.name, error = ?e, "shared cache server not answering: left alone for a while, its keys miss");
                }
            }
        }
        r
    }

    /// `items` grouped by the server that holds each key: (server, its items), for
    /// one request per server.
    fn by_node<'a, T>(
        &self,
        items: impl IntoIterator<Item = (&'a str, T)>,
    ) -> Vec<(usize, Vec<T>)> {
        let mut by: Vec<Vec<T>> = (0..self.nodes.len()).map(|_| Vec::new()).collect();
        for (k, t) in items {
            by[self.node_of(k)].push(t);
        }
        by.into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// The values under `keys`, grouped into one request per server. A server that
    /// failed gives misses for its keys; the errors are returned beside them.
    pub fn get_many(&self, keys: &[String]) -> (Vec<Option<Vec<u8>>>, Vec<StoreError>) {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let mut errors = Vec::new();
        let groups = self.by_node(keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)));
        for (node, idx) in groups {
            let ks: Vec<&str> = idx.iter().map(|&i| keys[i].as_str()).collect();
            match self.call(node, |s| s.get_many(&ks)) {
                Ok(vals) => {
                    for (i, v) in idx.into_iter().zip(vals) {
                        out[i] = v;
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    }

    /// Stores a run's values, one request per server. Returns how many were stored,
    /// their bytes, and per server that failed the error and how many values it lost.
    pub fn set_many(&self, items: &[(String, Vec<u8>)]) -> (u64, u64, Vec<(StoreError, u64)>) {
        let (mut stored, mut bytes, mut errors) = (0, 0, Vec::new());
        let groups = self.by_node(
            items
                .iter()
                .map(|(k, v)| (k.as_str(), (k.as_str(), v.as_slice()))),
        );
        for (node, batch) in groups {
            match self.call(node, |s| s.set_many(&batch)) {
                Ok(()) => {
                    stored += batch.len() as u64;
                    bytes += batch.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
                }
                Err(e) => errors.push((e, batch.len() as u64)),
            }
        }
        (stored, bytes, errors)
    }

    pub fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Res<bool> {
        self.call(self.node_of(key), |s| s.add(key, value, ttl))
    }

    pub fn delete(&self, key: &str) -> Res<()> {
        self.call(self.node_of(key), |s| s.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(n: usize) -> Store {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("memcached://127.0.0.1:{}", 40000 + i))
            .collect();
        Store::open(&urls, Duration::from_millis(10)).unwrap()
    }

    #[test]
    fn losing_a_server_moves_only_its_keys_and_the_spread_is_even() {
        let (four, three) = (ring_of(4), ring_of(3));
        let keys: Vec<String> = (0..20000).map(|i| format!("strata1:{i:08x}:7")).collect();
        let mut per = [0usize; 4];
        let mut moved = 0;
        for k in &keys {
            let a = four.node_of(k);
            per[a] += 1;
            // The fourth server gone: keys on the other three stay where they were.
            if a != 3 && three.node_of(k) != a {
                moved += 1;
            }
        }
        assert_eq!(moved, 0);
        for p in per {
            assert!((3500..6500).contains(&p), "{per:?}");
        }
    }

    #[test]
    fn a_breaker_opens_after_failures_and_lets_one_probe_through_later() {
        let b = Breaker::new();
        assert!(b.allow());
        assert!(!b.failure() && !b.failure());
        assert!(b.failure(), "third failure opens it");
        assert!(!b.allow());
        b.st.lock().open_until = Some(Instant::now());
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one");
        assert!(b.failure(), "a failed probe opens it again");
        assert_eq!(b.st.lock().pause, FIRST_PAUSE * 4);
        b.st.lock().open_until = Some(Instant::now());
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow());
    }

    #[test]
    fn mixed_or_unknown_urls_are_refused() {
        let e = |u: &[&str]| {
            Store::open(
                &u.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                Duration::from_millis(5),
            )
            .err()
            .unwrap()
        };
        assert!(e(&["memcached://a:1", "redis://b:2"]).contains("one kind"));
        assert!(e(&["ftp://a:1"]).contains("unknown shared cache kind"));
        assert!(e(&[]).contains("no shared cache servers"));
    }
}
