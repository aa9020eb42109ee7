//! Channels served to other processes (`warpfs::serve`): the region a client maps is the
//! memory the daemon serves; commands pause, resume and flush; a client that goes away (even
//! mid-request) gets its channel detached with every pending request answered; bad or silent
//! clients are refused and the server goes on serving.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
use warpfs::abi::{self, WfsRequest};
use warpfs::channel::{Channel, ChannelConfig};
use warpfs::region::SharedMemory;
use warpfs::serve::{ChannelLease, ChannelServer, Command, Hello, ServeConfig, HELLO_BYTES};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

const FILE_LEN: u64 = 1 << 20;
const CHILD_ENV: &str = "WARPFS_SERVE_CHILD";
const WAIT: Duration = Duration::from_secs(20);

fn pat(off: u64) -> u8 {
    (off.wrapping_mul(0x9E37_79B9) >> 11) as u8 ^ (off >> 16) as u8
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-serve-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn geometry() -> ChannelConfig {
    ChannelConfig {
        ring_capacity: 64,
        completions: 64,
        data_bytes: 64 * 4096,
    }
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        workers: 2,
        wait_timeout: WAIT,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// Posts one request through the server's view of the channel and waits for its result.
fn request(
    rt: &Runtime,
    ch: &Channel,
    op: u32,
    handle: u32,
    offset: u64,
    len: u64,
    buf: u64,
) -> i64 {
    post(rt, ch, 7, op, handle, offset, len, buf);
    ch.completions
        .wait(7, Some(WAIT))
        .expect("no answer in time")
}

#[allow(clippy::too_many_arguments)]
fn post(
    rt: &Runtime,
    ch: &Channel,
    idx: u32,
    op: u32,
    handle: u32,
    offset: u64,
    len: u64,
    buf: u64,
) {
    let ticket = 1000 + idx;
    ch.completions.arm(idx, ticket);
    ch.demand.push_blocking(&WfsRequest {
        op,
        flags: 0,
        handle,
        completion: idx,
        ticket,
        reserved: 0,
        offset,
        len,
        buf,
    });
    rt.ring_doorbell();
}

/// Where `len` bytes at `off` of the data region lie in the client's mapping.
fn client_ptr(lease: &ChannelLease, off: usize, len: usize) -> *mut u8 {
    let p = lease.placement();
    assert!(p.layout.data + off + len <= lease.region().len());
    // SAFETY: the offset lies inside the client's mapping (checked above).
    unsafe { lease.region().as_ptr().add(p.layout.data + off) }
}

/// Copies `bytes` into the client's view of the data region at `off`.
fn client_write(lease: &ChannelLease, off: usize, bytes: &[u8]) {
    let p = client_ptr(lease, off, bytes.len());
    // SAFETY: the range lies in the mapping, which `lease` keeps alive; the daemon touches it
    // only while serving a request this test waits for.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
}

/// The client's view of `len` bytes at `off` of the data region.
fn client_read(lease: &ChannelLease, off: usize, len: usize) -> Vec<u8> {
    let p = client_ptr(lease, off, len);
    // SAFETY: as in `client_write`.
    unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
}

#[test]
fn a_client_mapping_is_the_memory_the_daemon_serves() {
    let d = dir("map");
    let path = d.join("file");
    std::fs::write(&path, (0..FILE_LEN).map(pat).collect::<Vec<_>>()).unwrap();
    let rt = runtime();
    let f = rt.open(&path, OpenOptions::read_write()).unwrap().raw();
    let server = ChannelServer::bind(&rt, d.join("sock"), ServeConfig::default()).unwrap();
    let sock = server.path().to_path_buf();
    std::thread::scope(|s| {
        let client = s.spawn(move || ChannelLease::connect(&sock, geometry(), 64).unwrap());
        let served = server.accept().unwrap();
        let lease = client.join().unwrap();
        let ch = served.channel().clone();
        let serving = s.spawn(move || served.serve());

        // A read lands in the client's mapping.
        client_write(&lease, 4096, &[0xA5; 4096]);
        assert_eq!(
            request(&rt, &ch, abi::WFS_OP_READ, f, 123_456, 4096, 4096),
            4096
        );
        let got = client_read(&lease, 4096, 4096);
        for (i, &b) in got.iter().enumerate() {
            assert_eq!(b, pat(123_456 + i as u64), "byte {i} of the read");
        }
        // A write takes its bytes from the client's mapping.
        let src: Vec<u8> = (0..4096).map(|i| !pat(500_000 + i)).collect();
        client_write(&lease, 0, &src);
        assert_eq!(
            request(&rt, &ch, abi::WFS_OP_WRITE, f, 500_000, 4096, 0),
            4096
        );
        lease.command(Command::Flush).unwrap();
        let file = std::fs::read(&path).unwrap();
        for i in 0..4096u64 {
            assert_eq!(
                file[(500_000 + i) as usize],
                !pat(500_000 + i),
                "file byte {i}"
            );
        }
        // Paused, a request waits in the ring; resumed, it is answered.
        lease.command(Command::Pause).unwrap();
        client_write(&lease, 8192, &[0xA5; 100]);
        post(&rt, &ch, 9, abi::WFS_OP_READ, f, 77, 100, 8192);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ch.completions.poll(9), None, "answered while paused");
        assert_eq!(ch.demand.len(), 1);
        lease.command(Command::Resume).unwrap();
        assert_eq!(ch.completions.wait(9, Some(WAIT)), Some(100));
        let got = client_read(&lease, 8192, 100);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pat(77 + i as u64)));

        // A request naming memory outside the data region is refused, not served.
        let data_len = geometry().data_bytes as u64;
        assert!(request(&rt, &ch, abi::WFS_OP_READ, f, 0, 4096, data_len - 100) < 0);

        // The client goes away with a request pending: it is answered -ESHUTDOWN.
        lease.command(Command::Pause).unwrap();
        post(&rt, &ch, 11, abi::WFS_OP_READ, f, 0, 4096, 0);
        drop(lease);
        assert_eq!(serving.join().unwrap().unwrap(), 4, "commands served");
        assert_eq!(
            ch.completions.wait(11, Some(WAIT)),
            Some(-i64::from(libc::ESHUTDOWN))
        );
    });
    // The daemon still serves its own agents.
    let mut agent = rt.agent().unwrap();
    let h = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; 1000];
    assert_eq!(agent.read(&h, 4096, &mut buf).unwrap(), 1000);
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pat(4096 + i as u64)));
}

#[test]
fn bad_and_silent_clients_are_refused_and_the_server_goes_on() {
    let d = dir("bad");
    let rt = runtime();
    let server = ChannelServer::bind(
        &rt,
        d.join("sock"),
        ServeConfig {
            max_region_bytes: 64 << 20,
            hello_timeout: Duration::from_millis(300),
        },
    )
    .unwrap();
    let sock = server.path().to_path_buf();
    std::thread::scope(|s| {
        // Garbage instead of a hello: refused with EINVAL in the reply.
        let garbage = s.spawn(|| {
            let mut c = UnixStream::connect(&sock).unwrap();
            c.write_all(&[0x5Au8; HELLO_BYTES]).unwrap();
            let mut reply = [0u8; 64];
            c.read_exact(&mut reply).unwrap();
            i32::from_le_bytes(reply[4..8].try_into().unwrap())
        });
        assert!(server.accept().is_err());
        assert_eq!(garbage.join().unwrap(), -libc::EINVAL);

        // A channel larger than the server allows: refused, the client says why.
        let big = s.spawn(|| {
            let cfg = ChannelConfig {
                data_bytes: 1 << 30,
                ..geometry()
            };
            ChannelLease::connect(&sock, cfg, 64)
                .unwrap_err()
                .to_string()
        });
        assert!(server.accept().is_err());
        let msg = big.join().unwrap();
        assert!(msg.contains("refused"), "{msg}");

        // Nobody connects: a bounded accept gives up.
        assert!(matches!(
            server.accept_within(Duration::from_millis(50)),
            Err(warpfs::Error::Timeout(_))
        ));

        // A client that connects and says nothing is dropped after the hello timeout.
        let silent = UnixStream::connect(&sock).unwrap();
        assert!(server.accept().is_err());
        drop(silent);

        // A hello cut short by the client closing.
        let short = s.spawn(|| {
            let mut c = UnixStream::connect(&sock).unwrap();
            let h = Hello {
                channel: geometry(),
                control_bytes: 64,
            }
            .encode();
            c.write_all(&h[..10]).unwrap();
        });
        assert!(server.accept().is_err());
        short.join().unwrap();

        // A good client still gets its channel.
        let good = s.spawn(|| ChannelLease::connect(&sock, geometry(), 64).unwrap());
        let served = server.accept().unwrap();
        let lease = good.join().unwrap();
        assert!(lease.region().len() >= lease.placement().len);
        drop(lease);
        assert_eq!(served.serve().unwrap(), 0);
    });
}

/// The child half of the cross-process test: connects, writes a pattern into its mapping's
/// data region, flushes (a round trip, so the parent knows the bytes are there) and exits.
#[test]
fn serve_child() {
    let Ok(sock) = std::env::var(CHILD_ENV) else {
        return; // not a child
    };
    let lease = ChannelLease::connect(&sock, geometry(), 64).unwrap();
    let bytes: Vec<u8> = (0..3 * 4096).map(|i| pat(i * 3 + 1)).collect();
    client_write(&lease, 0, &bytes);
    lease.command(Command::Flush).unwrap();
    // Exit without any teardown, as a crashing client would.
    std::process::exit(0);
}

#[test]
fn another_process_shares_the_channel_and_its_exit_ends_it() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let d = dir("proc");
    let path = d.join("out");
    std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
    let rt = runtime();
    let server = ChannelServer::bind(&rt, d.join("sock"), ServeConfig::default()).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "serve_child", "--test-threads=1"])
        .env(CHILD_ENV, server.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served = server.accept().unwrap();
    let ch = served.channel().clone();
    assert_eq!(served.serve().unwrap(), 1, "the child's flush");
    assert!(child.wait().unwrap().success());
    // The bytes the child wrote are in the server's mapping of the region.
    let p = ch.data_range(0, 3 * 4096).expect("in the data region");
    // SAFETY: data_range checked the range lies in the channel's region, which `ch` keeps
    // alive; nobody else uses it any more (the client exited, the channel is detached).
    let got = unsafe { std::slice::from_raw_parts(p, 3 * 4096) };
    for (i, &b) in got.iter().enumerate() {
        assert_eq!(b, pat(i as u64 * 3 + 1), "byte {i} the child wrote");
    }
    // And the daemon can still write them out through its own agent.
    let mut agent = rt.agent().unwrap();
    let h = rt.open(&path, OpenOptions::read_write()).unwrap();
    assert_eq!(agent.write(&h, 0, got).unwrap(), got.len());
    rt.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), got);
}
