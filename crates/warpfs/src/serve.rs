//! Channels served to other processes.
//!
//! A GPU program can run in its own process and still use a daemon's files, host cache and
//! I/O engine: it connects to a [`ChannelServer`] over a Unix socket and gets a channel (rings,
//! completion records, data region) in shared memory, which it maps and hands to its kernels.
//! A kernel fault then kills only that client — on driver 580 a fault poisons every CUDA
//! context of the faulting process (ROBUSTNESS.md finding 12) — while the daemon keeps serving
//! everyone else, and the next client gets a fresh channel.
//!
//! # Protocol
//!
//! One stream connection per channel; integers are little-endian.
//!
//! 1. Client → server, [`Hello`] (40 bytes): magic `WFSC`, [`PROTOCOL_VERSION`], ring
//!    capacity, completion records, data bytes, and bytes of control memory the client wants
//!    after the channel (for its own words, e.g. the GPU `closing` flag).
//! 2. Server → client (64 bytes): magic, status (0 or a negative errno), the channel's layout
//!    (demand, prefetch, completions, data, total), the control offset and the region length;
//!    with status 0, the region's sealed memfd rides along (`SCM_RIGHTS`).
//! 3. Commands, one byte each, each answered with an `i64` (0 or a negative errno):
//!    [`Command::Pause`], [`Command::Resume`], [`Command::Flush`].
//! 4. The connection closing — the client exits, crashes or is killed — ends the channel: the
//!    server detaches it (requests left in its rings complete with `-ESHUTDOWN`, into memory
//!    the server still maps) and frees the region once the daemon has let go of it.
//!
//! The server trusts nothing the client sends: a hello is validated like a configuration
//! (refused with an errno in the reply), a silent client is dropped after
//! [`ServeConfig::hello_timeout`], and the shared region's size is sealed so a client cannot
//! shrink it under the daemon. What the client writes into the region is checked by the daemon
//! exactly as for any requester.

use crate::channel::{Channel, ChannelConfig, ChannelLayout};
use crate::error::{Error, Result};
use crate::region::{SharedFdMemory, SharedMemory};
use crate::runtime::Runtime;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAGIC: u32 = u32::from_le_bytes(*b"WFSC");
/// Version of the serving protocol; a peer speaking another one is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes of a hello.
pub const HELLO_BYTES: usize = 40;
const REPLY_BYTES: usize = 64;
/// Most control bytes a client may ask for after its channel.
pub const MAX_CONTROL_BYTES: usize = 1 << 20;

/// What a client asks for: a channel geometry and control bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Rings, completion records and data bytes of the channel.
    pub channel: ChannelConfig,
    /// Bytes the client keeps for itself after the channel (at most [`MAX_CONTROL_BYTES`]).
    pub control_bytes: usize,
}

/// Where a served channel's parts lie in the shared region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The channel's layout (offsets from the region's start).
    pub layout: ChannelLayout,
    /// Start of the client's control bytes (page aligned, after the channel).
    pub control: usize,
    /// Length of the whole region.
    pub len: usize,
}

impl Hello {
    /// The wire form.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        for (i, v) in [
            self.channel.ring_capacity,
            self.channel.completions,
            self.channel.data_bytes,
            self.control_bytes,
        ]
        .into_iter()
        .enumerate()
        {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&(v as u64).to_le_bytes());
        }
        b
    }

    /// Reads a hello and decides where everything goes ([`Hello::placement`]); refuses (with a
    /// message naming the field) a wrong magic or version, or what `placement` refuses.
    pub fn decode(b: &[u8; HELLO_BYTES], max_region_bytes: usize) -> Result<(Self, Placement)> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err(Error::Serve(
                "the peer is not a warpfs client (bad magic)".into(),
            ));
        }
        if u32_at(4) != PROTOCOL_VERSION {
            return Err(Error::Serve(format!(
                "the client speaks protocol version {}, this server {PROTOCOL_VERSION}: use the \
                 same warpfs version on both sides",
                u32_at(4)
            )));
        }
        let field = |i: usize, name: &str| {
            usize::try_from(u64_at(i))
                .map_err(|_| Error::Serve(format!("{name} {} is out of range", u64_at(i))))
        };
        let hello = Hello {
            channel: ChannelConfig {
                ring_capacity: field(8, "ring capacity")?,
                completions: field(16, "completion count")?,
                data_bytes: field(24, "data bytes")?,
            },
            control_bytes: field(32, "control bytes")?,
        };
        Ok((hello, hello.placement(max_region_bytes)?))
    }

    /// Where the channel and the control bytes go (the same rule on both sides); refuses a
    /// geometry [`ChannelConfig::layout`] refuses, too many control bytes, or a region larger
    /// than `max_region_bytes`.
    pub fn placement(&self, max_region_bytes: usize) -> Result<Placement> {
        if self.control_bytes > MAX_CONTROL_BYTES {
            return Err(Error::Serve(format!(
                "{} control bytes asked for; at most {MAX_CONTROL_BYTES}",
                self.control_bytes
            )));
        }
        let layout = self.channel.layout()?;
        let control = layout.end_page()?;
        let len = control
            .checked_add(self.control_bytes.max(1))
            .and_then(|l| l.checked_next_multiple_of(4096))
            .filter(|&l| l <= max_region_bytes)
            .ok_or_else(|| {
                Error::Serve(format!(
                    "the channel asked for needs more than this server's limit of \
                     {max_region_bytes} bytes (ServeConfig::max_region_bytes): ask for fewer \
                     records or smaller buffers"
                ))
            })?;
        Ok(Placement {
            layout,
            control,
            len,
        })
    }
}

fn encode_reply(status: i32, p: Option<&Placement>) -> [u8; REPLY_BYTES] {
    let mut b = [0u8; REPLY_BYTES];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&status.to_le_bytes());
    if let Some(p) = p {
        let l = p.layout;
        for (i, v) in [
            l.demand,
            l.prefetch,
            l.completions,
            l.data,
            l.total,
            p.control,
            p.len,
        ]
        .into_iter()
        .enumerate()
        {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&(v as u64).to_le_bytes());
        }
    }
    b
}

/// Commands a client sends over its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop serving the channel (requests waiting in its rings complete with `-ESHUTDOWN`;
    /// later ones wait). For tests of bounded waits.
    Pause,
    /// Serve the channel again.
    Resume,
    /// Flush the runtime (dirty host-cache pages written back, files synced).
    Flush,
}

impl Command {
    fn byte(self) -> u8 {
        match self {
            Command::Pause => b'P',
            Command::Resume => b'R',
            Command::Flush => b'F',
        }
    }
}

/// Limits a server puts on its clients.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest shared region (channel + control bytes) one client may get. The daemon's reads
    /// fill it, so it bounds the memory one client can make the daemon's host use. Default
    /// 4 GiB (a default `GpuIoConfig` asks for about 145 MiB).
    pub max_region_bytes: usize,
    /// How long a connected client may take to send its hello before it is dropped.
    pub hello_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_region_bytes: 4 << 30,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves channels of a [`Runtime`] to client processes through a Unix socket.
#[derive(Debug)]
pub struct ChannelServer<'rt> {
    rt: &'rt Runtime,
    listener: UnixListener,
    path: PathBuf,
    cfg: ServeConfig,
}

impl<'rt> ChannelServer<'rt> {
    /// Listens at `path` (a stale socket file there is replaced). Costs one socket.
    pub fn bind(rt: &'rt Runtime, path: impl AsRef<Path>, cfg: ServeConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if std::fs::symlink_metadata(&path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            Error::Serve(format!(
                "cannot listen at {}: {e}; choose a path in a writable directory that no \
                 other file uses",
                path.display()
            ))
        })?;
        Ok(Self {
            rt,
            listener,
            path,
            cfg,
        })
    }

    /// The socket's path (what clients connect to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next client and sets up its channel, attached to the daemon. A client
    /// whose hello is refused gets the errno in its reply and this returns the error; the
    /// server stays usable.
    pub fn accept(&self) -> Result<ServedChannel<'rt>> {
        let (stream, _) = self.listener.accept()?;
        self.open_channel(stream)
    }

    /// [`ChannelServer::accept`], giving up after `limit` with [`Error::Timeout`] when no
    /// client connected (for callers that also watch the process they expect to connect).
    /// Polls every millisecond.
    pub fn accept_within(&self, limit: Duration) -> Result<ServedChannel<'rt>> {
        self.listener.set_nonblocking(true)?;
        let start = std::time::Instant::now();
        let got = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break Ok(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= limit {
                        break Err(Error::Timeout(limit));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => break Err(Error::Io(e)),
            }
        };
        self.listener.set_nonblocking(false)?;
        let stream = got?;
        stream.set_nonblocking(false)?;
        self.open_channel(stream)
    }

    fn open_channel(&self, mut stream: UnixStream) -> Result<ServedChannel<'rt>> {
        stream.set_read_timeout(Some(self.cfg.hello_timeout))?;
        let mut hello = [0u8; HELLO_BYTES];
        stream
            .read_exact(&mut hello)
            .map_err(|e| Error::Serve(format!("client sent no complete hello: {e}")))?;
        let (hello, placement) = match Hello::decode(&hello, self.cfg.max_region_bytes) {
            Ok(v) => v,
            Err(e) => {
                let _ = stream.write_all(&encode_reply(-libc::EINVAL, None));
                return Err(e);
            }
        };
        let region = match SharedFdMemory::create(placement.len, "warpfs-channel") {
            Ok(r) => Arc::new(r),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::ENOMEM);
                let _ = stream.write_all(&encode_reply(-errno, None));
                return Err(Error::Serve(format!("cannot create a shared region: {e}")));
            }
        };
        let channel = Arc::new(Channel::in_region(
            hello.channel,
            region.clone() as Arc<dyn SharedMemory>,
        )?);
        let reply = encode_reply(0, Some(&placement));
        let fds = [region.fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(&reply)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| Error::Serve(format!("cannot answer the client: {e}")))?;
        if sent != REPLY_BYTES {
            return Err(Error::Serve(format!(
                "the reply went out short ({sent} of {REPLY_BYTES} bytes)"
            )));
        }
        stream.set_read_timeout(None)?;
        self.rt.attach_channel(channel.clone());
        Ok(ServedChannel {
            rt: self.rt,
            stream,
            channel,
            attached: true,
            ended: false,
        })
    }
}

impl Drop for ChannelServer<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One client's channel, attached to the daemon for as long as the client stays connected.
/// Dropping it detaches the channel (requests left in its rings complete with `-ESHUTDOWN`).
#[derive(Debug)]
pub struct ServedChannel<'rt> {
    rt: &'rt Runtime,
    stream: UnixStream,
    channel: Arc<Channel>,
    attached: bool,
    ended: bool,
}

impl ServedChannel<'_> {
    /// The channel (for statistics and tests).
    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Answers the client's commands until its connection closes (exit, crash, kill) or it
    /// breaks the protocol, then detaches the channel. Returns the commands served.
    pub fn serve(mut self) -> Result<u64> {
        let mut served = 0u64;
        let mut cmd = [0u8; 1];
        let out = loop {
            match self.stream.read(&mut cmd) {
                Ok(0) => break Ok(served),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(Error::Io(e)),
            }
            let result: i64 = match cmd[0] {
                b'P' => {
                    self.set_attached(false);
                    0
                }
                b'R' => {
                    self.set_attached(true);
                    0
                }
                b'F' => match self.rt.flush() {
                    Ok(()) => 0,
                    Err(e) => -i64::from(e.errno().unwrap_or(libc::EIO)),
                },
                _ => -i64::from(libc::EINVAL),
            };
            served += 1;
            if let Err(e) = self.stream.write_all(&result.to_le_bytes()) {
                break Err(Error::Io(e));
            }
        };
        self.end();
        out
    }

    /// Detaches the channel for good, answering `-ESHUTDOWN` to every request left in its
    /// rings — also those posted while service was paused.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.attached = false;
            self.rt.detach_channel(&self.channel);
        }
    }

    fn set_attached(&mut self, on: bool) {
        if self.attached == on {
            return;
        }
        self.attached = on;
        if on {
            self.rt.attach_channel(self.channel.clone());
        } else {
            self.rt.detach_channel(&self.channel);
        }
    }
}

impl Drop for ServedChannel<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// A channel leased from a [`ChannelServer`]: the shared region, mapped here, and the
/// connection that keeps the channel alive. Dropping it ends the channel.
#[derive(Debug)]
pub struct ChannelLease {
    stream: Mutex<UnixStream>,
    region: Arc<SharedFdMemory>,
    placement: Placement,
}

impl ChannelLease {
    /// Connects to the server at `path` and asks for a channel of geometry `cfg` with
    /// `control_bytes` of control memory after it. Costs a connection and the mapping.
    pub fn connect(
        path: impl AsRef<Path>,
        cfg: ChannelConfig,
        control_bytes: usize,
    ) -> Result<Self> {
        let path = path.as_ref();
        let mut stream = UnixStream::connect(path).map_err(|e| {
            Error::Serve(format!(
                "cannot reach a warpfs channel server at {}: {e}; start the serving process \
                 first",
                path.display()
            ))
        })?;
        let hello = Hello {
            channel: cfg,
            control_bytes,
        };
        stream.write_all(&hello.encode())?;
        let mut reply = [0u8; REPLY_BYTES];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut reply)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| Error::Serve(format!("no reply from the server: {e}")))?
        .bytes;
        let mut fd: Option<OwnedFd> = None;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for f in fds {
                    fd.get_or_insert(f);
                }
            }
        }
        if got == 0 {
            return Err(Error::Serve("the server closed the connection".into()));
        }
        stream.read_exact(&mut reply[got..])?;
        let u64_at = |i: usize| u64::from_le_bytes(reply[i..i + 8].try_into().expect("8 bytes"));
        if reply[0..4] != MAGIC.to_le_bytes() {
            return Err(Error::Serve("the peer is not a warpfs server".into()));
        }
        let status = i32::from_le_bytes(reply[4..8].try_into().expect("4 bytes"));
        if status != 0 {
            return Err(Error::Serve(format!(
                "the server refused the channel: {} (see its log for why)",
                std::io::Error::from_raw_os_error(-status)
            )));
        }
        let fd = fd.ok_or_else(|| Error::Serve("the server sent no region".into()))?;
        let region = Arc::new(SharedFdMemory::open(fd)?);
        let at = |i: usize| usize::try_from(u64_at(i)).unwrap_or(usize::MAX);
        let placement = Placement {
            layout: ChannelLayout {
                demand: at(8),
                prefetch: at(16),
                completions: at(24),
                data: at(32),
                total: at(40),
            },
            control: at(48),
            len: at(56),
        };
        // Our own computation must agree with the server's: both sides use one layout rule.
        let want = hello.placement(usize::MAX)?;
        if placement != want || region.len() < placement.len {
            return Err(Error::Serve(format!(
                "the server placed the channel differently ({placement:?}, region of {} \
                 bytes) than this client expects ({want:?}): use the same warpfs version on \
                 both sides",
                region.len()
            )));
        }
        Ok(Self {
            stream: Mutex::new(stream),
            region,
            placement,
        })
    }

    /// The shared region, mapped in this process.
    pub fn region(&self) -> &Arc<SharedFdMemory> {
        &self.region
    }

    /// Where the channel's parts and the control bytes lie in the region.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Closes the connection: the server detaches the channel (requests left in its rings
    /// complete with `-ESHUTDOWN`). Commands fail afterwards. Idempotent.
    pub fn close(&self) {
        let s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let _ = s.shutdown(std::net::Shutdown::Both);
    }

    /// Sends `cmd` and waits for the server's answer (a round trip on the socket).
    pub fn command(&self, cmd: Command) -> Result<()> {
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(&[cmd.byte()])?;
        let mut r = [0u8; 8];
        s.read_exact(&mut r)?;
        match i64::from_le_bytes(r) {
            0 => Ok(()),
            e => Err(Error::from_result("channel command", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ChannelConfig {
        ChannelConfig {
            ring_capacity: 64,
            completions: 64,
            data_bytes: 64 * 4096,
        }
    }

    #[test]
    fn a_hello_round_trips_and_places_the_control_bytes_after_the_channel() {
        let h = Hello {
            channel: cfg(),
            control_bytes: 64,
        };
        let (back, p) = Hello::decode(&h.encode(), usize::MAX).unwrap();
        assert_eq!(back, h);
        assert_eq!(p.layout, cfg().layout().unwrap());
        assert!(p.control >= p.layout.total && p.control.is_multiple_of(4096));
        assert!(p.len >= p.control + 64 && p.len.is_multiple_of(4096));
    }

    #[test]
    fn bad_hellos_are_refused() {
        let good = Hello {
            channel: cfg(),
            control_bytes: 64,
        };
        let mut b = good.encode();
        b[0] ^= 1;
        assert!(Hello::decode(&b, usize::MAX).is_err(), "magic");
        let mut b = good.encode();
        b[4] = 99;
        assert!(Hello::decode(&b, usize::MAX).is_err(), "version");
        let mut b = good.encode();
        b[8..16].copy_from_slice(&3u64.to_le_bytes());
        assert!(
            Hello::decode(&b, usize::MAX).is_err(),
            "ring capacity not a power of two"
        );
        let mut b = good.encode();
        b[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(
            Hello::decode(&b, usize::MAX).is_err(),
            "no completion records"
        );
        let mut b = good.encode();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            Hello::decode(&b, usize::MAX).is_err(),
            "data bytes overflow"
        );
        let mut b = good.encode();
        b[32..40].copy_from_slice(&(MAX_CONTROL_BYTES as u64 + 1).to_le_bytes());
        assert!(Hello::decode(&b, usize::MAX).is_err(), "control bytes");
        assert!(Hello::decode(&good.encode(), 4096).is_err(), "region limit");
    }
}
