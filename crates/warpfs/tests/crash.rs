//! Crash durability: nothing acknowledged is lost when the process dies.
//!
//! The parent re-executes this test binary as a child (`WARPFS_CRASH_CHILD` set) that writes
//! random ranges of a file through warpfs (host backend: `Agent::write`, then `Agent::fsync`),
//! telling the parent on its stdout, before each write, what it is about to write (`W`) and,
//! after each fsync is acknowledged, that everything so far is durable (`A`). The parent kills
//! the child with SIGKILL at a random moment, then checks every byte of the file: it must hold
//! the last acknowledged value, or the value of a write the child had announced but not yet
//! seen acknowledged. Trials alternate write-through and write-back caches (write-back: writes
//! to resident pages only dirty them, so an fsync must write them back before it is
//! acknowledged).
//!
//! `WARPFS_CRASH_TRIALS` sets the number of kill-9 trials (default 100).

use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use warpfs::cache::CacheConfig;
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

const FILE_LEN: u64 = 256 * 1024;
const CHILD_ENV: &str = "WARPFS_CRASH_CHILD";
const TRIALS_ENV: &str = "WARPFS_CRASH_TRIALS";
const MARK: &str = "WARPFS-CRASH ";

/// Byte at `off` written by write number `generation` (0: the file's initial content).
fn val(off: u64, generation: u64) -> u8 {
    if generation == 0 {
        return 0;
    }
    let x = off
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(generation.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    (x >> 29) as u8 | 1 // never 0, so a lost write is never mistaken for the initial content
}

/// The child: writes until killed. Runs only when the parent set `WARPFS_CRASH_CHILD`.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // not a child: nothing to do
    };
    let mut parts = spec.splitn(3, ':');
    let seed: u64 = parts.next().unwrap().parse().unwrap();
    let write_back = parts.next().unwrap() == "wb";
    let path = PathBuf::from(parts.next().unwrap());
    let rt = Runtime::new(RuntimeConfig {
        workers: 2,
        cache: CacheConfig {
            page_size: 4096,
            capacity: 32 * 4096,
        },
        write_back,
        max_agents: 2,
        agent_queue_depth: 8,
        request_buffer: 16384,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let f = rt.open(&path, OpenOptions::read_write()).unwrap();
    let mut agent = rt.agent().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}R").unwrap();
    out.flush().unwrap();
    let mut generation = 0u64;
    let mut buf = vec![0u8; 40_000];
    loop {
        for _ in 0..rng.random_range(1..5) {
            let off = rng.random_range(0..FILE_LEN - 1);
            let len = rng.random_range(1..=(FILE_LEN - off).min(40_000));
            if rng.random_bool(0.3) {
                // Reads make pages resident, so write-back mode dirties them in the cache.
                agent.read(&f, off, &mut buf[..len as usize]).unwrap();
            }
            generation += 1;
            let data: Vec<u8> = (off..off + len).map(|o| val(o, generation)).collect();
            writeln!(out, "{MARK}W {generation} {off} {len}").unwrap();
            out.flush().unwrap();
            assert_eq!(agent.write(&f, off, &data).unwrap(), len as usize);
        }
        agent.fsync(&f).unwrap();
        writeln!(out, "{MARK}A {generation}").unwrap();
        out.flush().unwrap();
    }
}

/// What the parent learnt from one child before killing it.
#[derive(Default)]
struct Log {
    /// Announced writes: (generation, offset, len), in order.
    writes: Vec<(u64, u64, u64)>,
    /// Highest generation acknowledged durable.
    acked: u64,
    ready: bool,
}

fn parse(line: &str, log: &mut Log) {
    // The test harness may print "test crash_child ... " on the same line as the first mark.
    let Some(rest) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
        return;
    };
    let w: Vec<&str> = rest.split_whitespace().collect();
    match w.as_slice() {
        ["R"] => log.ready = true,
        ["W", g, o, l] => {
            log.writes
                .push((g.parse().unwrap(), o.parse().unwrap(), l.parse().unwrap()))
        }
        ["A", g] => log.acked = g.parse().unwrap(),
        _ => panic!("unexpected line from the child: {line:?}"),
    }
}

/// Checks the file against the log; returns the number of acknowledged bytes it verified.
fn verify(path: &Path, log: &Log, trial: usize) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        bytes.len() as u64,
        FILE_LEN,
        "trial {trial}: the file changed size"
    );
    // Per byte: the last acknowledged generation, and the generations written after it.
    let mut acked = vec![0u64; FILE_LEN as usize];
    let mut maybe: Vec<Vec<u64>> = vec![Vec::new(); FILE_LEN as usize];
    let mut checked = 0u64;
    for &(g, off, len) in &log.writes {
        for o in off..off + len {
            if g <= log.acked {
                acked[o as usize] = g;
                maybe[o as usize].clear();
            } else {
                maybe[o as usize].push(g);
            }
        }
    }
    for (o, &b) in bytes.iter().enumerate() {
        let o64 = o as u64;
        let a = acked[o];
        if a > 0 {
            checked += 1;
        }
        if b == val(o64, a) || maybe[o].iter().any(|&g| b == val(o64, g)) {
            continue;
        }
        panic!(
            "trial {trial}: byte {o} is {b:#04x}; acknowledged generation {a} wrote {:#04x} \
             (unacknowledged later generations: {:?}) — an acknowledged byte was lost",
            val(o64, a),
            maybe[o]
        );
    }
    checked
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let trials: usize = std::env::var(TRIALS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC4A5);
    let (mut acked_total, mut bytes_total, mut killed_mid_write) = (0u64, 0u64, 0usize);
    for trial in 0..trials {
        let path = dir.join(format!("t{trial}"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(FILE_LEN)
            .unwrap();
        let mode = if trial % 2 == 0 { "wt" } else { "wb" };
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{trial}:{mode}:{}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut log = Log::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                parse(&line, &mut log);
                if log.ready {
                    let _ = tx.send(());
                }
            }
            log
        });
        // Bounded: a child that never gets ready fails the test instead of hanging it.
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the child never started writing");
        std::thread::sleep(Duration::from_micros(rng.random_range(0..40_000)));
        // SAFETY: kill has no memory preconditions; the pid is our own child's (not reaped yet).
        let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(r, 0, "kill failed: {}", std::io::Error::last_os_error());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the child exited on its own: {status:?}"
        );
        let log = reader.join().unwrap();
        if log.writes.last().is_some_and(|w| w.0 > log.acked) {
            killed_mid_write += 1;
        }
        acked_total += log.acked;
        bytes_total += verify(&path, &log, trial);
        let _ = std::fs::remove_file(&path);
    }
    eprintln!(
        "crash: {trials} kill-9 trials, {acked_total} acknowledged writes, {bytes_total} \
         acknowledged bytes verified, {killed_mid_write} kills between a write and its fsync \
         acknowledgement, 0 lost"
    );
    assert!(
        acked_total >= trials as u64,
        "too few acknowledged writes ({acked_total}): the test must exercise durability"
    );
    assert!(
        killed_mid_write > 0,
        "no kill landed between a write and its fsync"
    );
}
