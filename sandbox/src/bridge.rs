//! The bridge to a kernel that speaks TCP only (Deno's). Middleman reaches every kernel
//! through sockets in the ipc directory; a TCP-only kernel listens on loopback ports instead,
//! so the jail's init listens on those socket paths for it, and for each connection Middleman
//! makes there, connects to the kernel's port from inside the jail and hands the connected TCP
//! socket to Middleman (`SCM_RIGHTS`): from then on Middleman and the kernel talk directly,
//! with no copy in between, and Middleman speaks ZeroMQ over it itself.
//!
//! With namespaces the ports are on the jail's own loopback (init brings `lo` up in the jail's
//! network namespace, which has no other interface): nothing outside the jail can reach them,
//! and the kernel reaches nothing but them. A socket belongs to the namespace it was made in,
//! so the socket Middleman is handed still leads into the jail, and only to that port.
//! Without namespaces (a pod's kernel container) the ports are on the pod's loopback, and
//! Landlock lets the kernel bind and connect to those ports only (`rules`), never to
//! Middleman's.
//!
//! The listeners are made while init still has its privileges (the ipc directory belongs to
//! the kernel's user) and handed to that user; a thread per listener serves them, started
//! after init restricted itself, so it holds every restriction the kernel holds.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType, recvmsg, sendmsg,
};

use serde::{Deserialize, Serialize};

/// One bridged channel: a unix socket path (as the kernel sees the ipc directory) and the
/// loopback port the kernel listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgedPort {
    pub socket: PathBuf,
    pub port: u16,
}

/// How long a connection waits for the kernel to listen on its port (its start-up).
const KERNEL_START: Duration = Duration::from_secs(60);

/// Failures making the listeners.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge socket {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loopback up: {0}")]
    Loopback(#[source] nix::Error),
}

/// A listening socket and where its connections go.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    port: u16,
}

/// Makes the listeners at `ports`' paths, owned by `owner` (the kernel's uid and gid) when
/// given, with the permissions the kernel's `umask` would give its own sockets.
pub fn listen(
    ports: &[BridgedPort],
    owner: Option<u32>,
    umask: u32,
) -> Result<Vec<Listener>, BridgeError> {
    ports
        .iter()
        .map(|p| {
            let error = |source| BridgeError::Listen {
                path: p.socket.clone(),
                source,
            };
            let _ = std::fs::remove_file(&p.socket);
            let listener = UnixListener::bind(&p.socket).map_err(error)?;
            set_owner(&p.socket, owner, umask).map_err(error)?;
            Ok(Listener {
                listener,
                port: p.port,
            })
        })
        .collect()
}

fn set_owner(path: &Path, owner: Option<u32>, umask: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(uid) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777 & !umask))
}

/// Serves every listener on a thread of its own until the process ends.
pub fn serve(listeners: Vec<Listener>) {
    for Listener { listener, port } in listeners {
        let _ = std::thread::Builder::new()
            .name(format!("bridge-{port}"))
            .spawn(move || {
                // One connection at a time: Middleman makes one per channel (the heartbeat's
                // again after a miss), and each is handed over at once.
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if let Some(tcp) = connect(port) {
                        let _ = hand_over(&stream, tcp.as_fd());
                    }
                }
            });
    }
}

/// Connects to the kernel's port, waiting for it to listen (its start-up).
fn connect(port: u16) -> Option<TcpStream> {
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let began = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match TcpStream::connect(address) {
            // Middleman sets TCP_NODELAY on the socket it is handed.
            Ok(tcp) => return Some(tcp),
            Err(_) if began.elapsed() < KERNEL_START => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(_) => return None,
        }
    }
}

/// Sends the descriptor `fd` over `unix` with one byte of data (a message of no bytes carries
/// no rights).
fn hand_over(unix: &UnixStream, fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    Ok(sendmsg(
        unix,
        &[IoSlice::new(&[1])],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Takes the TCP connection handed over on `unix` (see [`serve`]). `WouldBlock` when nothing
/// has arrived yet on a non-blocking socket; an error when the jail closed the socket without
/// one (the kernel never listened) or sent something that is not a connected TCP socket.
pub fn receive(unix: BorrowedFd<'_>) -> std::io::Result<TcpStream> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let message = recvmsg(
        unix,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Every descriptor received is owned at once, so none leaks whatever happens next.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for cmsg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    let refused = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let Some(fd) = fds.into_iter().next() else {
        return Err(if message.bytes == 0 {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the jail closed the bridge without a connection (the kernel is not listening)",
            )
        } else {
            refused("the bridge sent no connection")
        });
    };
    let stream = rustix::net::sockopt::socket_type(&fd)? == SocketType::STREAM;
    let inet = rustix::net::getsockname(&fd)?.address_family() == AddressFamily::INET;
    if !(stream && inet) {
        return Err(refused(
            "the bridge sent something other than a TCP connection",
        ));
    }
    // Connected, and to a loopback port: the kernel's, in the jail (or the pod) it runs in.
    let tcp = TcpStream::from(fd);
    match tcp.peer_addr() {
        Ok(peer) if peer.ip().is_loopback() => Ok(tcp),
        _ => Err(refused(
            "the bridge sent a connection to somewhere other than loopback",
        )),
    }
}

/// Brings the loopback interface of this network namespace up (a new namespace's `lo` is down,
/// so nothing can bind 127.0.0.1): one `RTM_NEWLINK` request over rtnetlink, as `ip link set
/// lo up` sends. `lo` is interface 1 in every namespace.
pub fn loopback_up() -> Result<(), BridgeError> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(BridgeError::Loopback)?;
    // nlmsghdr (16 bytes) then ifinfomsg (16 bytes), native byte order.
    let mut message = Vec::with_capacity(32);
    message.extend_from_slice(&32u32.to_ne_bytes());
    message.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
    message.extend_from_slice(&[0, 0]); // family AF_UNSPEC, padding
    message.extend_from_slice(&0u16.to_ne_bytes()); // device type
    message.extend_from_slice(&1i32.to_ne_bytes()); // interface index: lo
    message.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    message.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(BridgeError::Loopback)?;
    let mut answer = [0u8; 256];
    let n = recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut answer,
        MsgFlags::empty(),
    )
    .map_err(BridgeError::Loopback)?;
    // The acknowledgement: an NLMSG_ERROR message whose error field is 0 (or minus an errno).
    let kind = answer.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let error = answer
        .get(16..20)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (n >= 20, kind, error) {
        (true, Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (true, Some(NLMSG_ERROR), Some(e)) => {
            Err(BridgeError::Loopback(nix::errno::Errno::from_raw(-e)))
        }
        _ => Err(BridgeError::Loopback(nix::errno::Errno::EPROTO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[test]
    fn a_connection_to_the_port_is_handed_over_once_the_port_listens() {
        let dir = std::env::temp_dir().join(format!("bridge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("k1-1");
        // A free port, listened on only after the client connected (a kernel starting late).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listeners = listen(
            &[BridgedPort {
                socket: socket.clone(),
                port,
            }],
            None,
            0o077,
        )
        .unwrap();
        serve(listeners);
        let client = UnixStream::connect(&socket).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let server = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut handed = receive(std::os::fd::AsFd::as_fd(&client)).unwrap();
        let (mut peer, _) = server.accept().unwrap();
        handed.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong").unwrap();
        handed.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        assert_eq!(handed.peer_addr().unwrap().port(), port);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn anything_but_a_tcp_connection_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // A unix socket instead of a TCP one, then a TCP socket that is not connected.
        let (other, _keep) = UnixStream::pair().unwrap();
        let unconnected = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        for fd in [other.as_fd(), unconnected.as_fd()] {
            hand_over(&theirs, fd).unwrap();
            let refused = receive(std::os::fd::AsFd::as_fd(&ours)).unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        }
        // Closed with nothing sent: the kernel never listened.
        drop(theirs);
        let closed = receive(std::os::fd::AsFd::as_fd(&ours)).unwrap_err();
        assert_eq!(closed.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
