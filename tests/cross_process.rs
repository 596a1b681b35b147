//! Feature `redis`: real processes (`examples/cross_process.rs`, which `cargo test` builds)
//! publishing and receiving through a redis-server the test starts.
#![cfg(feature = "redis")]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support {
    pub mod deadline;
    pub mod redis_server;
}
use support::deadline::deadline;
use support::redis_server::RedisServer;

const LIMIT: Duration = Duration::from_secs(240);

/// The example's binary, beside this test's (`target/<profile>/examples/`).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("examples").join("cross_process");
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Proc {
    fn run(server: &RedisServer, args: &[impl AsRef<std::ffi::OsStr>]) -> Proc {
        let url = server.url("");
        let child = Command::new(example())
            .args(args)
            .args(["--url", &url, "--stream", "orders"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Waits for the process; its stdout, which must say it succeeded.
    fn finish(mut self) -> String {
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
    }

    fn kill(mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The event numbers a receiver wrote, one per line, in order (repeats kept).
fn handled(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_for_lines(out: &Path, at_least: usize, limit: Duration) {
    let started = Instant::now();
    while handled(out).len() < at_least {
        assert!(started.elapsed() < limit, "{} lines not reached", at_least);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The arguments of a receiver `b` that exits after `expect` events, writing them to `out`.
fn receive_args(expect: &str, out: &Path) -> Vec<String> {
    let out = out.to_str().unwrap();
    [
        "receive",
        "--consumer",
        "b",
        "--expect",
        expect,
        "--out",
        out,
        "--claim-ms",
        "1000",
    ]
    .map(String::from)
    .to_vec()
}

fn temp_out(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ringbus-{name}-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn a_publisher_process_and_a_receiver_process_handle_every_event_exactly_once() {
    let _deadline = deadline("exactly_once", LIMIT);
    let server = RedisServer::start();
    let out = temp_out("once");
    let receiver = Proc::run(&server, &receive_args("100000", &out));
    let publisher = Proc::run(&server, &["publish", "--events", "100000"]);
    println!("{}", publisher.finish());
    println!("{}", receiver.finish());
    let got = handled(&out);
    assert_eq!(got.len(), 100_000, "every event once, no repeats");
    assert_eq!(got.iter().copied().collect::<HashSet<_>>().len(), 100_000);
    let _ = std::fs::remove_file(out);
}

#[test]
fn a_receiver_killed_mid_run_and_restarted_still_handles_every_event() {
    let _deadline = deadline("sigkill", LIMIT);
    killed_and_restarted("killed", "1");
}

/// The same with 16 events an entry: an entry half handled when its receiver died comes back
/// whole, and its events are handled (again, for those handled before the kill).
#[test]
fn a_receiver_of_packed_entries_killed_mid_run_and_restarted_still_handles_every_event() {
    let _deadline = deadline("sigkill_packed", LIMIT);
    killed_and_restarted("killed-packed", "16");
}

fn killed_and_restarted(name: &str, pack: &str) {
    let server = RedisServer::start();
    let out = temp_out(name);
    let args = receive_args("50000", &out);
    let receiver = Proc::run(&server, &args);
    let publisher = Proc::run(&server, &["publish", "--events", "50000", "--pack", pack]);
    wait_for_lines(&out, 5_000, Duration::from_secs(60));
    receiver.kill();
    let before = handled(&out).len();
    assert!(before < 50_000, "killed mid-run");
    println!("{}", publisher.finish());
    let restarted = Proc::run(&server, &args);
    println!("{}", restarted.finish());
    let got = handled(&out);
    let distinct: HashSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = (0..50_000).filter(|n| !distinct.contains(n)).collect();
    let strays: Vec<u64> = distinct.iter().filter(|&&n| n >= 50_000).copied().collect();
    assert!(
        missing.is_empty() && strays.is_empty(),
        "every event handled: {} missing (first {:?}), strays {strays:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(distinct, (0..50_000).collect(), "every event handled");
    println!(
        "killed after {before} lines; {} handled twice (delivered again: handled, not acknowledged)",
        got.len() - distinct.len()
    );
    let _ = std::fs::remove_file(out);
}

#[test]
fn two_instances_in_one_group_split_the_work_and_no_event_is_handled_by_both() {
    let _deadline = deadline("split", LIMIT);
    let server = RedisServer::start();
    let (out1, out2) = (temp_out("split1"), temp_out("split2"));
    let run = |consumer: &str, out: &Path| {
        let args = [
            "receive",
            "--consumer",
            consumer,
            "--out",
            out.to_str().unwrap(),
            "--idle-exit",
            "3",
        ];
        Proc::run(&server, &args)
    };
    let (b1, b2) = (run("b1", &out1), run("b2", &out2));
    let publisher = Proc::run(&server, &["publish", "--events", "40000"]);
    println!("{}", publisher.finish());
    println!("{}{}", b1.finish(), b2.finish());
    let (h1, h2) = (handled(&out1), handled(&out2));
    let (s1, s2): (HashSet<u64>, HashSet<u64>) =
        (h1.iter().copied().collect(), h2.iter().copied().collect());
    assert!(
        !h1.is_empty() && !h2.is_empty(),
        "both worked: {} and {}",
        h1.len(),
        h2.len()
    );
    assert!(s1.is_disjoint(&s2), "no event handled by both");
    assert_eq!(h1.len() + h2.len(), 40_000);
    assert_eq!(&s1 | &s2, (0..40_000).collect());
    let _ = (std::fs::remove_file(out1), std::fs::remove_file(out2));
}

#[test]
fn a_redis_restart_mid_run_loses_nothing_acknowledged() {
    let _deadline = deadline("redis_restart", LIMIT);
    let mut server = RedisServer::start();
    let out = temp_out("restart");
    let receiver = Proc::run(&server, &receive_args("50000", &out));
    let publisher = Proc::run(&server, &["publish", "--events", "50000"]);
    wait_for_lines(&out, 5_000, Duration::from_secs(60));
    server.restart(); // SIGKILL, then the same port and AOF (appendfsync always)
    println!("{}", publisher.finish());
    println!("{}", receiver.finish());
    let distinct: HashSet<u64> = handled(&out).into_iter().collect();
    assert_eq!(
        distinct,
        (0..50_000).collect(),
        "nothing lost across the restart"
    );
    let _ = std::fs::remove_file(out);
}
