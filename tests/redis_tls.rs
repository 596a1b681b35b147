//! Feature `redis-tls`: the Redis Streams backend over `rediss://` against a real
//! `redis-server` with TLS on (certificates made by `openssl` for the test), with a private CA,
//! mutual TLS and an ACL user together.
#![cfg(feature = "redis-tls")]

use std::time::{Duration, Instant};

use ringbus::bridge::{Backend, BridgeError, EventId, Outgoing, RedisOptions, RedisStreams};

mod support {
    pub mod deadline;
    pub mod redis_server;
    pub mod tls_certs;
}
use support::deadline::deadline;
use support::redis_server::RedisServer;
use support::tls_certs::TlsCerts;

const LIMIT: Duration = Duration::from_secs(120);

fn outgoing(n: u64) -> Outgoing {
    Outgoing {
        id: EventId::next(),
        projection: "p".into(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

/// Sends `n` entries on `backend` and reads them back, acknowledged.
fn round_trip(backend: &mut RedisStreams, n: u64) {
    let sent: Vec<Outgoing> = (0..n).map(outgoing).collect();
    backend.send(&sent).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < sent.len() && started.elapsed() < Duration::from_secs(20) {
        let batch = backend.receive(256, Duration::from_millis(50)).unwrap();
        let entries: Vec<String> = batch.iter().map(|r| r.entry.clone()).collect();
        backend.acknowledge(&entries).unwrap();
        got.extend(batch);
    }
    let ids: Vec<EventId> = got.iter().map(|r| r.body.as_ref().unwrap().id).collect();
    assert_eq!(ids, sent.iter().map(|o| o.id).collect::<Vec<_>>());
    assert_eq!(backend.pending().unwrap(), 0);
}

#[test]
fn events_travel_over_tls_with_a_private_ca_and_an_untrusted_server_is_refused() {
    let _deadline = deadline("tls", LIMIT);
    let certs = TlsCerts::make();
    let server = RedisServer::with_tls(&certs.dir, false, "");
    let options = RedisOptions::new(server.tls_url(""), "s").tls_roots(certs.pem("ca.crt"));
    let mut backend = RedisStreams::connect(options).unwrap();
    round_trip(&mut backend, 500);

    // A server whose certificate no trusted root signed: a connection error, no hang.
    for options in [
        RedisOptions::new(server.tls_url(""), "s").tls_roots(certs.pem("other-ca.crt")),
        RedisOptions::new(server.tls_url(""), "s"),
    ] {
        let refused = RedisStreams::connect(options.connect_timeout(Duration::from_secs(2)));
        let err = refused.unwrap_err();
        assert!(matches!(err, BridgeError::Connection(_)), "{err:?}");
        assert!(err.to_string().contains("certificate"), "{err}");
    }
    // Plain text to the TLS port is not answered as Redis.
    let plain = RedisStreams::connect(
        RedisOptions::new(
            format!("redis://127.0.0.1:{}/", server.tls_port.unwrap()),
            "s",
        )
        .connect_timeout(Duration::from_secs(2)),
    );
    assert!(plain.is_err());
}

#[test]
fn mutual_tls_needs_the_client_certificate_and_the_key_is_never_shown() {
    let _deadline = deadline("mtls", LIMIT);
    let certs = TlsCerts::make();
    let server = RedisServer::with_tls(
        &certs.dir,
        true,
        "user default off\nuser alice on >s3cret-pw ~* &* +@all",
    );
    let url = server.tls_url("alice:s3cret-pw@");
    let without = RedisStreams::connect(
        RedisOptions::new(url.clone(), "s")
            .tls_roots(certs.pem("ca.crt"))
            .connect_timeout(Duration::from_secs(2)),
    );
    assert!(
        matches!(without, Err(BridgeError::Connection(_))),
        "{without:?}"
    );

    let key = certs.pem("client.key");
    let options = RedisOptions::new(url.clone(), "s")
        .tls_roots(certs.pem("ca.crt"))
        .tls_client(certs.pem("client.crt"), key.clone());
    let key_text = String::from_utf8(key).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    let mut backend = RedisStreams::connect(options.clone()).unwrap();
    for shown in [format!("{options:?}"), format!("{backend:?}")] {
        assert!(
            !shown.contains(key_line) && !shown.contains("s3cret-pw"),
            "{shown}"
        );
    }
    round_trip(&mut backend, 100);

    // The right certificate with the wrong password: the ACL still decides.
    let wrong = RedisStreams::connect(
        RedisOptions::new(server.tls_url("alice:wrong-pw@"), "s")
            .tls_roots(certs.pem("ca.crt"))
            .tls_client(certs.pem("client.crt"), certs.pem("client.key")),
    )
    .unwrap_err();
    assert!(matches!(wrong, BridgeError::Auth(_)), "{wrong:?}");
}

#[test]
fn certificates_for_a_plain_url_or_that_do_not_parse_are_config_errors() {
    let certs = TlsCerts::make();
    let plain = RedisStreams::connect(
        RedisOptions::new("redis://127.0.0.1:1/", "s").tls_roots(certs.pem("ca.crt")),
    );
    assert!(matches!(plain, Err(BridgeError::Config(_))), "{plain:?}");
    let garbage = RedisStreams::connect(
        RedisOptions::new("rediss://127.0.0.1:1/", "s").tls_roots(b"not a certificate".to_vec()),
    );
    assert!(
        matches!(garbage, Err(BridgeError::Config(_))),
        "{garbage:?}"
    );
    let no_key = RedisStreams::connect(RedisOptions::new("rediss://127.0.0.1:1/", "s").tls_client(
        certs.pem("client.crt"),
        b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n".to_vec(),
    ));
    let err = no_key.unwrap_err();
    assert!(matches!(err, BridgeError::Config(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("c2VjcmV0"), "{err:?}");
}
