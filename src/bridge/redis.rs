//! [`Backend`] on Redis Streams: `XADD` (pipelined, with an approximate length cap) to send,
//! consumer groups (`XREADGROUP`, `XACK`, `XAUTOCLAIM`) to receive.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Client, Connection, ErrorKind, RedisError, RedisResult, Value};

use super::backend::wait_millis;
use super::envelope::{EventId, Incoming, Malformed, Outgoing, Received};
use super::metrics::{BridgeMetrics, Count};
use super::reply::{self, Entry};
use super::{Backend, BridgeError};

/// The stream fields of an entry: the event's id, its projection, its payload.
const ID: &str = "id";
const PROJECTION: &str = "projection";
const PAYLOAD: &str = "payload";

/// How long a command may wait for its reply (a blocking read: this beyond its block time)
/// before the connection is taken for dead: a half-open TCP connection must not hang a call.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest broker message an error carries (a type error's carries the whole reply).
const MESSAGE_LIMIT: usize = 200;

/// Where a [`RedisStreams`] connects and how it sends and receives.
#[derive(Clone)]
pub struct RedisOptions {
    url: String,
    stream: String,
    group: String,
    consumer: String,
    max_len: Option<u64>,
    claim_idle: Duration,
    max_payload: usize,
    connect_timeout: Duration,
    dead_letters: Option<String>,
    events_per_entry: usize,
    #[cfg(feature = "redis-tls")]
    tls: Tls,
}

/// The certificates of a `rediss://` connection, when not the system's defaults.
#[cfg(feature = "redis-tls")]
#[derive(Clone, Default)]
struct Tls {
    /// PEM roots trusted instead of the system's.
    roots: Option<Vec<u8>>,
    /// PEM certificate chain and private key shown to the server (mutual TLS).
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisOptions {
    /// `url` is the redis crate's: `redis://[user][:password@]host[:port][/db]`, or
    /// `rediss://` for TLS (when the redis crate is built with a TLS feature). `stream` is
    /// the stream's key. Defaults: group `ringbus`, consumer `ringbus-<pid>`, no length cap,
    /// claim after 30 s, payloads up to 1 MiB, connect within 5 s.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            stream: stream.into(),
            group: "ringbus".into(),
            consumer: format!("ringbus-{}", std::process::id()),
            max_len: None,
            claim_idle: Duration::from_secs(30),
            max_payload: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            dead_letters: None,
            events_per_entry: 1,
            #[cfg(feature = "redis-tls")]
            tls: Tls::default(),
        }
    }

    /// The consumer group: every group gets every entry (one per service); the consumers of
    /// one group share them (the instances of a service).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// This consumer's name within its group. Give an instance a stable name (its pod's or
    /// host's) so that, restarted, it takes back the entries it left pending at once rather
    /// than after the claim timeout.
    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = consumer.into();
        self
    }

    /// Caps the stream at about `entries` (`XADD MAXLEN ~`): older entries are trimmed, even
    /// ones a group has not read yet. Size it above what the slowest group may lag.
    pub fn max_len(mut self, entries: u64) -> Self {
        self.max_len = Some(entries);
        self
    }

    /// How long an entry stays pending with a quiet consumer before another consumer of the
    /// group takes it (`XAUTOCLAIM`'s minimum idle time). A [`Receiver`](super::Receiver)
    /// keeps its entries whose events are still in its store from being taken, refreshing
    /// them every third of this time (`XCLAIM ... JUSTID`), until it forgets them.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// The largest encoded payload sent or accepted, in bytes (go-events' `MaxPayloadSize`).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Moves entries that are not events (malformed, over the payload limit, trimmed) aside
    /// to the stream `stream` before handing them on: each is appended there with its
    /// original fields, its entry id (`entry`), the stream it came from (`stream`) and why
    /// (`reason`). Without it they are only counted. If the broker cannot be reached the
    /// read fails (its entries come again); if it refuses the copy (the key is not a stream,
    /// an ACL forbids it), the read goes on without it, counted in `dead_letter_failures`.
    pub fn dead_letters(mut self, stream: impl Into<String>) -> Self {
        self.dead_letters = Some(stream.into());
        self
    }

    /// Packs up to `events` consecutive events of a send into one stream entry (at least
    /// one; one by default). An entry then holds the fields `id`, `projection`, `payload` once
    /// per event, in order: still readable in `redis-cli`, but a reader that maps an entry's
    /// fields by name sees only one event (usually the last). Redis's work per entry
    /// (append, delivery, pending list, acknowledgement) is then shared by the events: about
    /// twice the throughput at 16 an entry.
    /// The price: an entry is acknowledged once all its events settled as handled, so one
    /// failed event brings its entry's others again (dropped then as duplicates, while the
    /// receiver's window holds their ids); a group's consumers share entries, not events;
    /// and `max_len` counts entries. Any receiver reads both forms.
    pub fn events_per_entry(mut self, events: usize) -> Self {
        self.events_per_entry = events.max(1);
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts the PEM certificates `pem` (a private CA's, say) as the roots of a `rediss://`
    /// server's certificate, instead of the system's. The server's name in the URL must be
    /// one its certificate names.
    #[cfg(feature = "redis-tls")]
    pub fn tls_roots(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots = Some(pem.into());
        self
    }

    /// Shows the server a client certificate (mutual TLS, `tls-auth-clients yes`): the PEM
    /// certificate chain `certificate` and its PEM private key `key`. The key is never shown
    /// in `Debug` output or errors.
    #[cfg(feature = "redis-tls")]
    pub fn tls_client(mut self, certificate: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls.client = Some((certificate.into(), key.into()));
        self
    }

    /// True when certificates other than the system's defaults were given.
    fn has_tls_certificates(&self) -> bool {
        #[cfg(feature = "redis-tls")]
        {
            self.tls.roots.is_some() || self.tls.client.is_some()
        }
        #[cfg(not(feature = "redis-tls"))]
        false
    }

    /// The redis crate's client for these options (nothing is connected yet).
    fn client(&self) -> Result<Client, BridgeError> {
        let tls_url = self.url.starts_with("rediss://");
        if tls_url && !cfg!(feature = "redis-tls") {
            return Err(BridgeError::Config(
                "a `rediss://` URL needs ringbus's `redis-tls` feature".into(),
            ));
        }
        if self.has_tls_certificates() && !tls_url {
            return Err(BridgeError::Config(
                "TLS certificates were given for a URL that is not `rediss://`".into(),
            ));
        }
        let built = {
            #[cfg(feature = "redis-tls")]
            {
                install_crypto_provider();
                self.tls.check()?;
                if self.has_tls_certificates() {
                    let certificates = redis::TlsCertificates {
                        client_tls: self.tls.client.clone().map(|(certificate, key)| {
                            redis::ClientTlsConfig {
                                client_cert: certificate,
                                client_key: key,
                            }
                        }),
                        root_cert: self.tls.roots.clone(),
                    };
                    Client::build_with_tls(self.url.as_str(), certificates)
                } else {
                    Client::open(self.url.as_str())
                }
            }
            #[cfg(not(feature = "redis-tls"))]
            Client::open(self.url.as_str())
        };
        built.map_err(|e| {
            BridgeError::Config(format!(
                "the URL (scheme `{}`) or its TLS certificates do not parse: {}",
                scheme_of(&self.url),
                e.category()
            ))
        })
    }
}

#[cfg(feature = "redis-tls")]
impl Tls {
    /// Checks the PEM given holds what it should (the redis crate takes a text without a
    /// certificate as an empty list of roots, which would trust nothing and fail only at
    /// connect, as if the server were wrong).
    fn check(&self) -> Result<(), BridgeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificates = |what: &str, pem: &[u8]| {
            let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
            match parsed {
                Ok(list) if !list.is_empty() => Ok(()),
                Ok(_) => Err(BridgeError::Config(format!(
                    "the TLS {what} hold no PEM certificate"
                ))),
                Err(e) => Err(BridgeError::Config(format!(
                    "the TLS {what} do not parse: {e}"
                ))),
            }
        };
        if let Some(roots) = &self.roots {
            certificates("roots", roots)?;
        }
        if let Some((chain, key)) = &self.client {
            certificates("client certificates", chain)?;
            // The key's own error could quote it: only say that it does not parse.
            PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                BridgeError::Config("the TLS client key is not a PEM private key".into())
            })?;
        }
        Ok(())
    }
}

/// Makes rustls's `ring` provider the process default, unless the application installed one
/// (or its crate features make rustls pick one itself).
#[cfg(feature = "redis-tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redacted_url(&self.url))
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("max_len", &self.max_len)
            .field("claim_idle", &self.claim_idle)
            .field("max_payload", &self.max_payload)
            .field("connect_timeout", &self.connect_timeout)
            .field("dead_letters", &self.dead_letters)
            .field("events_per_entry", &self.events_per_entry)
            .field("tls_certificates", &self.has_tls_certificates())
            .finish()
    }
}

/// `url` with its credentials replaced by `***`: everything between the scheme and the last
/// `@` (a password may hold `/`, `?` or `#` unencoded), and the whole query (`redis+unix`
/// URLs carry `user` and `pass` there).
fn redacted_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "***".into();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let shown = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_owned(),
    };
    match shown.find('?') {
        Some(q) => format!("{scheme}{}?***", &shown[..q]),
        None => format!("{scheme}{shown}"),
    }
}

/// The scheme of `url`, for messages about a URL that does not parse (nothing else of it is
/// shown: where its credentials are cannot be known).
fn scheme_of(url: &str) -> &str {
    url.find("://").map_or("", |i| &url[..i + 3])
}

/// A Redis Streams [`Backend`]: one stream, and when receiving, one consumer of one group.
/// Blocking, on one connection, made again (counted in `reconnects`) when it breaks.
pub struct RedisStreams {
    options: RedisOptions,
    client: Client,
    connection: Option<Connection>,
    /// While this consumer's own pending entries (an earlier run's) are being read: where
    /// the next read starts. `None` once they are all read.
    own_pending: Option<String>,
    /// Where the next `XAUTOCLAIM` scan starts.
    claim_cursor: String,
    last_claim: Option<Instant>,
    group_ready: bool,
    metrics: Arc<BridgeMetrics>,
}

impl fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreams")
            .field("options", &self.options)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStreams {
    /// Connects, authenticates with the URL's credentials, and checks the server answers.
    ///
    /// # Errors
    /// [`BridgeError::Config`] for an empty stream, group or consumer name, a zero payload
    /// limit, a URL that does not parse, a `rediss://` URL without the `redis-tls` feature,
    /// TLS certificates for a plain URL, or certificates or a key that do not parse;
    /// [`BridgeError::Auth`] when the server refuses the credentials;
    /// [`BridgeError::Connection`] when it cannot be reached, or its TLS certificate is not
    /// trusted (or it wants a client certificate and none was given).
    pub fn connect(options: RedisOptions) -> Result<Self, BridgeError> {
        for (name, value) in [
            ("stream", &options.stream),
            ("group", &options.group),
            ("consumer", &options.consumer),
        ] {
            if value.is_empty() {
                return Err(BridgeError::Config(format!("the {name} name is empty")));
            }
        }
        if options.max_payload == 0 {
            return Err(BridgeError::Config("the payload limit is zero".into()));
        }
        let client = options.client()?;
        let mut streams = RedisStreams {
            options,
            client,
            connection: None,
            own_pending: Some("0".into()),
            claim_cursor: "0-0".into(),
            last_claim: None,
            group_ready: false,
            metrics: Arc::default(),
        };
        streams.reconnect()?;
        Ok(streams)
    }

    /// The backend's counters.
    pub fn metrics(&self) -> &Arc<BridgeMetrics> {
        &self.metrics
    }

    /// How many entries of the stream are pending in this consumer's group (delivered, not
    /// acknowledged), across its consumers.
    ///
    /// # Errors
    /// A connection or broker error.
    pub fn pending(&mut self) -> Result<u64, BridgeError> {
        self.ensure_group()?;
        let (stream, group) = (self.options.stream.clone(), self.options.group.clone());
        let reply: Value =
            self.run(|c| redis::cmd("XPENDING").arg(&stream).arg(&group).query(c))?;
        match reply {
            Value::Array(fields) => match fields.first() {
                Some(Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
                _ => Ok(0),
            },
            _ => Ok(0),
        }
    }

    /// Makes the connection (again) and checks it with `PING`.
    fn reconnect(&mut self) -> Result<(), BridgeError> {
        self.connection = None;
        let mut connection = self
            .client
            .get_connection_with_timeout(self.options.connect_timeout)
            .map_err(|e| classify(&e))?;
        connection
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| connection.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| classify(&e))?;
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .map_err(|e| classify(&e))?;
        self.connection = Some(connection);
        // A read whose reply the broken connection lost left its entries pending with this
        // consumer: read this consumer's pending entries again from the start.
        self.own_pending = Some("0".into());
        Ok(())
    }

    /// Runs `op` on the connection; if the connection broke, makes it again and runs `op`
    /// once more (a second break is the caller's error). A command refused because the group
    /// is gone (the stream was deleted, or the server restarted without persistence) makes
    /// the group again and runs once more too.
    fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BridgeError> {
        let mut retried = false;
        loop {
            if self.connection.is_none() {
                self.reconnect()?;
                self.metrics.add(Count::Reconnects, 1);
            }
            let Some(connection) = self.connection.as_mut() else {
                continue;
            };
            match op(connection) {
                Ok(value) => return Ok(value),
                Err(e) if !retried && broke(&e) => {
                    self.connection = None;
                }
                Err(e) if !retried && e.code() == Some("NOGROUP") => {
                    self.group_ready = false;
                    self.ensure_group()?;
                }
                Err(e) => return Err(classify(&e)),
            }
            retried = true;
        }
    }

    /// Makes the group (reading from the stream's oldest entry) and the stream if missing.
    fn ensure_group(&mut self) -> Result<(), BridgeError> {
        if self.group_ready {
            return Ok(());
        }
        let (stream, group) = (self.options.stream.clone(), self.options.group.clone());
        for attempt in 0..2 {
            if self.connection.is_none() {
                self.reconnect()?;
                self.metrics.add(Count::Reconnects, 1);
            }
            let Some(connection) = self.connection.as_mut() else {
                continue;
            };
            let made: RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&group)
                .arg("0")
                .arg("MKSTREAM")
                .query(connection);
            match made {
                Err(e) if e.code() != Some("BUSYGROUP") => {
                    if attempt == 0 && broke(&e) {
                        self.connection = None;
                        continue;
                    }
                    return Err(classify(&e));
                }
                _ => {
                    self.group_ready = true;
                    return Ok(());
                }
            }
        }
        Err(BridgeError::Connection(
            "the connection broke twice while making the group".into(),
        ))
    }

    /// The events of `entries` as [`Received`], counted, an entry's events together; those
    /// that are not events first moved aside to the dead-letter stream, if there is one (if
    /// that fails, none of `entries` is handed on: they stay pending and come again).
    fn received(
        &mut self,
        entries: Vec<Entry>,
        redelivered: bool,
    ) -> Result<Vec<Received>, BridgeError> {
        let limit = self.options.max_payload;
        let parsed: Vec<Vec<Event<'_>>> = entries.iter().map(|e| events_of(e, limit)).collect();
        let malformed = parsed.iter().flatten().filter(|e| e.body.is_err()).count();
        if let Some(dead) = self.options.dead_letters.clone()
            && malformed > 0
        {
            let mut pipe = redis::pipe();
            for (entry, events) in entries.iter().zip(&parsed) {
                for event in events {
                    let Err(why) = &event.body else { continue };
                    let xadd = pipe.cmd("XADD").arg(&dead).arg("*");
                    xadd.arg("entry").arg(&entry.id);
                    xadd.arg("stream").arg(&self.options.stream);
                    xadd.arg("reason").arg(why.to_string());
                    for (name, value) in event.fields {
                        if let Value::BulkString(bytes) = value {
                            xadd.arg(name.as_slice()).arg(bytes.as_slice());
                        }
                    }
                    xadd.ignore();
                }
            }
            match self.run(|c| pipe.query::<()>(c)) {
                Ok(()) => {}
                // Unreachable or broken: the entries stay pending and come again.
                Err(e @ BridgeError::Connection(_)) => return Err(e),
                // The dead-letter stream refuses (not a stream, an ACL): handing the batch on
                // without the copies beats starving its events behind one bad entry.
                Err(_) => self
                    .metrics
                    .add(Count::DeadLetterFailures, malformed as u64),
            }
        }
        let mut received = Vec::with_capacity(parsed.iter().map(Vec::len).sum());
        for (entry, events) in entries.iter().zip(parsed) {
            received.extend(events.into_iter().map(|event| Received {
                body: event.body,
                entry: entry.id.clone(),
                redelivered,
            }));
        }
        self.metrics.add(Count::Received, received.len() as u64);
        if redelivered {
            self.metrics.add(Count::Redelivered, received.len() as u64);
        }
        self.metrics.add(Count::Malformed, malformed as u64);
        Ok(received)
    }

    /// This consumer's own pending entries from where the last read of them ended.
    fn read_own_pending(&mut self, max: usize, from: String) -> Result<Vec<Received>, BridgeError> {
        let entries = self.read_group(max, None, &from).inspect_err(|_| {
            // Read from the same place next time (unless a reconnect restarted it).
            self.own_pending.get_or_insert(from.clone());
        })?;
        self.own_pending = entries.last().map(|last| last.id.clone());
        self.received(entries, true)
    }

    /// `XREADGROUP` of up to `max` entries after `from` (`>`: never delivered), blocking up
    /// to `block` milliseconds if given.
    fn read_group(
        &mut self,
        max: usize,
        block: Option<u64>,
        from: &str,
    ) -> Result<Vec<Entry>, BridgeError> {
        let (stream, group, consumer) = self.names();
        let reply: Value = self.run(|c| {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(max);
            if let Some(block) = block {
                read.arg("BLOCK").arg(block);
                c.set_read_timeout(Some(Duration::from_millis(block) + REPLY_TIMEOUT))?;
            }
            let reply = read.arg("STREAMS").arg(&stream).arg(from).query(c);
            if block.is_some() {
                c.set_read_timeout(Some(REPLY_TIMEOUT))?;
            }
            reply
        })?;
        reply::read_group(reply)
    }

    /// Entries pending with consumers quiet for longer than the claim timeout, taken over.
    fn claim_stale(&mut self, max: usize) -> Result<Vec<Received>, BridgeError> {
        let (stream, group, consumer) = self.names();
        let idle = u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let cursor = self.claim_cursor.clone();
        let reply: Value = self.run(|c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&group)
                .arg(&consumer)
                .arg(idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(max)
                .query(c)
        })?;
        // Entries deleted or trimmed while pending come back as ids alone: acknowledged
        // away with the rest, as malformed.
        let (next, entries) = reply::auto_claim(reply)?;
        self.claim_cursor = next;
        self.received(entries, true)
    }

    fn names(&self) -> (String, String, String) {
        (
            self.options.stream.clone(),
            self.options.group.clone(),
            self.options.consumer.clone(),
        )
    }
}

impl Backend for RedisStreams {
    fn send(&mut self, batch: &[Outgoing]) -> Result<(), BridgeError> {
        let limit = self.options.max_payload;
        if let Some(big) = batch.iter().find(|o| o.payload.len() > limit) {
            return Err(BridgeError::PayloadTooLarge {
                size: big.payload.len(),
                limit,
            });
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in batch.chunks(self.options.events_per_entry) {
            let xadd = pipe.cmd("XADD").arg(&self.options.stream);
            if let Some(max_len) = self.options.max_len {
                xadd.arg("MAXLEN").arg("~").arg(max_len);
            }
            xadd.arg("*");
            for outgoing in entry {
                xadd.arg(ID)
                    .arg(outgoing.id.to_string())
                    .arg(PROJECTION)
                    .arg(&outgoing.projection)
                    .arg(PAYLOAD)
                    .arg(&outgoing.payload);
            }
            xadd.ignore();
        }
        self.run(|c| pipe.query::<()>(c))?;
        self.metrics.add(Count::Sent, batch.len() as u64);
        Ok(())
    }

    fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<Received>, BridgeError> {
        let max = max.max(1);
        self.ensure_group()?;
        if let Some(from) = self.own_pending.take() {
            let own = self.read_own_pending(max, from)?;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        let claim_due = self
            .last_claim
            .is_none_or(|at| at.elapsed() >= self.options.claim_idle / 2);
        if claim_due {
            let claimed = self.claim_stale(max)?;
            // A scan that wrapped round ("0-0") waits for the next period; one with more to
            // scan goes on at the next receive.
            if self.claim_cursor == "0-0" {
                self.last_claim = Some(Instant::now());
            }
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let ids = self.read_group(max, Some(wait_millis(wait)), ">")?;
        self.received(ids, false)
    }

    fn acknowledge(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (stream, group, _) = self.names();
        let acked: u64 = self.run(|c| {
            redis::cmd("XACK")
                .arg(&stream)
                .arg(&group)
                .arg(entries)
                .query(c)
        })?;
        self.metrics.add(Count::Acked, acked);
        Ok(())
    }

    /// `XCLAIM` of the entries to this consumer with no minimum idle time, `JUSTID`: their
    /// idle time starts again (and their delivery count stays), so no `XAUTOCLAIM` of another
    /// consumer takes them. Entries acknowledged meanwhile are not pending and are left alone.
    fn keep_alive(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (stream, group, consumer) = self.names();
        self.run(|c| {
            redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(&group)
                .arg(&consumer)
                .arg(0)
                .arg(entries)
                .arg("JUSTID")
                .query::<Value>(c)
        })?;
        Ok(())
    }

    /// A third of the claim timeout: two chances to refresh an entry before it could be
    /// claimed.
    fn keep_alive_every(&self) -> Option<Duration> {
        Some(self.options.claim_idle / 3)
    }

    fn close(&mut self) -> Result<(), BridgeError> {
        self.connection = None;
        Ok(())
    }
}

/// The events of `entry` (one, or several when the sender packed them), or why one is
/// not an event. Several `id` fields mean several events: each starts at its `id` field
/// (the first also takes the fields before it); one or none, one event of all the fields,
/// in any order.
fn events_of(entry: &Entry, max_payload: usize) -> Vec<Event<'_>> {
    let Some(fields) = &entry.fields else {
        return vec![Event {
            fields: &[],
            body: Err(Malformed::Trimmed),
        }];
    };
    let is_id = |(name, _): &(Vec<u8>, Value)| name == ID.as_bytes();
    let mut starts: Vec<usize> = fields
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, field)| is_id(field))
        .map(|(at, _)| at)
        .collect();
    if !fields.first().is_some_and(is_id) && !starts.is_empty() {
        // The fields before the first `id` belong to its event.
        starts.remove(0);
    }
    let mut events = Vec::with_capacity(starts.len() + 1);
    let mut from = 0;
    for end in starts.into_iter().chain([fields.len()]) {
        let group = &fields[from..end];
        events.push(Event {
            fields: group,
            body: body(group, max_payload),
        });
        from = end;
    }
    events
}

/// The event of the fields `fields`, or why it is not one.
fn body(fields: &[(Vec<u8>, Value)], max_payload: usize) -> Result<Incoming, Malformed> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
            .map(|(_, value)| value)
    };
    let bytes = |name: &'static str| match field(name) {
        Some(Value::BulkString(bytes)) => Ok(bytes.as_slice()),
        Some(_) => Err(Malformed::BadField(name)),
        None => Err(Malformed::MissingField(name)),
    };
    let text = |name: &'static str| {
        std::str::from_utf8(bytes(name)?).map_err(|_| Malformed::BadField(name))
    };
    let id: EventId = text(ID)?.parse()?;
    let projection = text(PROJECTION)?.to_owned();
    let payload = bytes(PAYLOAD)?;
    if payload.len() > max_payload {
        return Err(Malformed::TooLarge {
            size: payload.len(),
            limit: max_payload,
        });
    }
    Ok(Incoming {
        id,
        projection,
        payload: payload.to_vec(),
    })
}

/// One event's fields of an entry, and the event they make, or why they make none.
struct Event<'e> {
    fields: &'e [(Vec<u8>, Value)],
    body: Result<Incoming, Malformed>,
}

/// True when `error` means the connection is gone, or is in a state unknown (a reply that
/// timed out may still come): the command may be run again on a new one.
fn broke(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// `error` as a [`BridgeError`], by kind. An authentication error carries its code alone (a
/// `NOPERM` message names the user); others the redis crate's message, cut short.
fn classify(error: &RedisError) -> BridgeError {
    let auth = matches!(error.kind(), ErrorKind::AuthenticationFailed)
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    if auth {
        return BridgeError::Auth(error.code().unwrap_or("authentication failed").to_owned());
    }
    let mut message = error.to_string();
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    // Refusals that pass: a server loading its data, a replica, a failover.
    let transient = matches!(
        error.code(),
        Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "BUSY")
    );
    if broke(error) || transient {
        BridgeError::Connection(message)
    } else {
        BridgeError::Broker(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        for (url, shown) in [
            (
                "redis://alice:s3cret@127.0.0.1:6379/0",
                "redis://***@127.0.0.1:6379/0",
            ),
            ("redis://:s3cret@host", "redis://***@host"),
            ("rediss://u:p@w@host:1/?x=@", "rediss://***@"),
            ("redis://u:p?ss@h:1/", "redis://***@h:1/"),
            ("redis://host:6379", "redis://host:6379"),
            ("s3cret", "***"),
            ("redis://u:p#ss@h/", "redis://***@h/"),
            ("redis://u:p@ss/word@h", "redis://***@h"),
            (
                "redis+unix:///sock?user=u&pass=s3cret",
                "redis+unix:///sock?***",
            ),
        ] {
            assert_eq!(redacted_url(url), shown);
        }
        let options = RedisOptions::new("redis://alice:s3cret@127.0.0.1/", "s");
        let debug = format!("{options:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("alice"),
            "{debug}"
        );
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(fields: &[&str]) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: Some(
                fields
                    .chunks(2)
                    .map(|p| (p[0].as_bytes().to_vec(), bulk(p[1])))
                    .collect(),
            ),
        }
    }

    #[test]
    fn an_entry_splits_into_events_at_each_id_field() {
        let (a, b) = (EventId::next().to_string(), EventId::next().to_string());
        let bodies =
            |e: &Entry| -> Vec<_> { events_of(e, 8).into_iter().map(|e| e.body).collect() };
        // One event, fields in any order.
        let one = bodies(&entry(&["payload", "x", "projection", "p", "id", &a]));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_ref().unwrap().payload, b"x");
        // Two packed, the first with a field before its id.
        let two = bodies(&entry(&[
            "projection",
            "p",
            "id",
            &a,
            "payload",
            "1",
            "id",
            &b,
            "projection",
            "q",
            "payload",
            "2",
        ]));
        let names: Vec<_> = two
            .iter()
            .map(|b| b.as_ref().unwrap().projection.clone())
            .collect();
        assert_eq!(names, ["p", "q"]);
        // Over the limit, alone; no fields at all; trimmed.
        let big = bodies(&entry(&[
            "id",
            &a,
            "projection",
            "p",
            "payload",
            "123456789",
            "id",
            &b,
            "projection",
            "p",
            "payload",
            "1",
        ]));
        assert_eq!(big[0], Err(Malformed::TooLarge { size: 9, limit: 8 }));
        assert!(big[1].is_ok());
        assert_eq!(bodies(&entry(&[])), [Err(Malformed::MissingField("id"))]);
        assert_eq!(
            bodies(&Entry {
                id: "1-0".into(),
                fields: None
            }),
            [Err(Malformed::Trimmed)]
        );
    }

    #[test]
    fn bad_options_are_typed_errors() {
        let err = RedisStreams::connect(RedisOptions::new("redis://127.0.0.1:1/", "")).unwrap_err();
        assert!(matches!(err, BridgeError::Config(_)), "{err:?}");
        let err =
            RedisStreams::connect(RedisOptions::new("redis://127.0.0.1:1/", "s").max_payload(0))
                .unwrap_err();
        assert!(matches!(err, BridgeError::Config(_)), "{err:?}");
        let err = RedisStreams::connect(RedisOptions::new("http://u:s3cret@h/", "s")).unwrap_err();
        assert!(matches!(err, BridgeError::Config(_)), "{err:?}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        // TLS without the feature is a configuration error that names it; with it, this
        // closed port is unreachable.
        let err =
            RedisStreams::connect(RedisOptions::new("rediss://127.0.0.1:1/", "s")).unwrap_err();
        if cfg!(feature = "redis-tls") {
            assert!(matches!(err, BridgeError::Connection(_)), "{err:?}");
        } else {
            assert!(matches!(err, BridgeError::Config(_)), "{err:?}");
            assert!(err.to_string().contains("redis-tls"), "{err}");
        }
    }
}
