//! Reading a call's media sockets without the empty read after each packet.
//!
//! tokio learns that a socket is drained only from a read that fails with
//! `EAGAIN`, so one RTP packet every 20 ms cost two `recvfrom`, one of them
//! empty. `recvmmsg` (Linux) with room for two datagrams tells it for free:
//! one datagram back means the queue was empty when it was read, and the
//! readiness can be cleared then. `UdpSocket::try_io` clears it on
//! `WouldBlock` unless the socket became ready again meanwhile (tokio
//! compares the readiness event's tick), so a packet that arrives between the
//! read and the clear still wakes the task: nothing is left waiting.
//!
//! Written here because no crate does only this on a tokio socket: mio,
//! socket2 and tokio have no `recvmmsg`; quinn-udp's batch receive also turns
//! on GRO (datagrams of one flow coalesced into one buffer) and ancillary
//! data for QUIC, which an RTP socket must not get.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tokio::net::UdpSocket;

/// Datagrams read per system call: two, so that a short read (one) proves
/// the queue empty; a second one waiting is read in the same call.
pub(super) const BATCH: usize = 2;

/// Largest datagram kept whole: above any RTP or RTCP packet on a path with
/// a 1,500-byte MTU; a longer one is truncated, as `recv_from` did.
pub(super) const DATAGRAM: usize = 2048;

/// One call's receive buffers, shared by its media sockets: a task reads one
/// socket at a time and handles what it read before reading again.
pub(super) struct Datagrams {
    bufs: [[u8; DATAGRAM]; BATCH],
    meta: [(usize, SocketAddr); BATCH],
}

impl Datagrams {
    pub(super) fn new() -> Self {
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        Datagrams {
            bufs: [[0; DATAGRAM]; BATCH],
            meta: [(0, none); BATCH],
        }
    }

    /// Datagram `i` of the last read: its bytes (writable, for the relay's
    /// payload-type rewrite) and its source.
    pub(super) fn get(&mut self, i: usize) -> (&mut [u8], SocketAddr) {
        let (len, from) = self.meta[i];
        (&mut self.bufs[i][..len], from)
    }

    /// Read what `sock` holds, up to [`BATCH`] datagrams: `Ready(Ok(n))`
    /// with `n ≥ 1`, or `Pending` with the task registered for the socket's
    /// next readiness.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub(super) fn poll_recv(
        &mut self,
        sock: &UdpSocket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(sock.poll_recv_ready(cx))?;
            let mut got = 0;
            let r = sock.try_io(tokio::io::Interest::READABLE, || {
                got = self.read(sock)?;
                if got < BATCH {
                    // Drained: have tokio clear the readiness (see the module doc).
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match r {
                Ok(()) => return Poll::Ready(Ok(got)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got > 0 {
                        return Poll::Ready(Ok(got));
                    }
                    // Nothing there: the readiness is cleared, poll again to register.
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Without `recvmmsg`: one datagram, and tokio's empty read after it.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub(super) fn poll_recv(
        &mut self,
        sock: &UdpSocket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut buf = tokio::io::ReadBuf::new(&mut self.bufs[0]);
        let from = std::task::ready!(sock.poll_recv_from(cx, &mut buf))?;
        self.meta[0] = (buf.filled().len(), from);
        Poll::Ready(Ok(1))
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    fn read(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            iovs[i].iov_base = buf.as_mut_ptr().cast();
            iovs[i].iov_len = buf.len();
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every msghdr points at a live buffer of the length it
        // gives and at a sockaddr_storage; the kernel writes no further.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let len = (msgs[i].msg_len as usize).min(DATAGRAM);
            // A source the kernel did not fill in (not IPv4/IPv6) cannot be
            // answered or latched: dropped like garbage.
            match sockaddr(&addrs[i]) {
                Some(from) => self.meta[i] = (len, from),
                None => self.meta[i] = (0, SocketAddr::from(([0, 0, 0, 0], 0))),
            }
        }
        Ok(n)
    }
}

/// The socket address the kernel wrote into a `sockaddr_storage`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn recv(d: &mut Datagrams, sock: &UdpSocket) -> usize {
        std::future::poll_fn(|cx| d.poll_recv(sock, cx))
            .await
            .expect("recv")
    }

    /// What was sent arrives whole, with its source, in order, two at a
    /// time when two wait; an empty socket then leaves the task pending,
    /// and a packet sent later wakes it (the cleared readiness comes back).
    #[tokio::test]
    async fn reads_every_datagram_in_order_and_wakes_for_the_next() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let rx = UdpSocket::bind(any).await.unwrap();
            let tx = UdpSocket::bind(any).await.unwrap();
            let to = rx.local_addr().unwrap();
            for k in 0..3u8 {
                tx.send_to(&[k; 172], to).await.unwrap();
            }
            let mut d = Datagrams::new();
            let mut seen = Vec::new();
            while seen.len() < 3 {
                let n = recv(&mut d, &rx).await;
                assert!((1..=BATCH).contains(&n));
                for i in 0..n {
                    let (bytes, from) = d.get(i);
                    assert_eq!(from, tx.local_addr().unwrap());
                    assert_eq!(bytes.len(), 172);
                    seen.push(bytes[0]);
                }
            }
            assert_eq!(seen, [0, 1, 2]);
            // Drained: pending, then woken by the next datagram.
            let pending = std::future::poll_fn(|cx| Poll::Ready(d.poll_recv(&rx, cx))).await;
            assert!(pending.is_pending());
            let late = async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tx.send_to(&[9; 1500], to).await.unwrap();
            };
            let (n, ()) = tokio::join!(recv(&mut d, &rx), late);
            assert_eq!(n, 1);
            assert_eq!(d.get(0).0, &[9; 1500][..]);
        }
    }

    /// A datagram longer than the buffer is cut to it, not lost.
    #[tokio::test]
    async fn an_oversized_datagram_is_truncated_to_the_buffer() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tx.send_to(&[7; 4000], rx.local_addr().unwrap())
            .await
            .unwrap();
        let mut d = Datagrams::new();
        assert_eq!(recv(&mut d, &rx).await, 1);
        assert_eq!(d.get(0).0.len(), DATAGRAM);
    }
}
