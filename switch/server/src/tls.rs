//! TLS 1.3 on the native protocol's TCP port. The switch's certificate and key, and for mutual
//! TLS the authority whose client certificates it accepts, come from PEM files (`[tls]`). A
//! connection's first byte says which it is: 0x16 opens a TLS handshake record, while a native
//! frame opens with its magic (0x50 first), so one port serves both and plain TCP is refused
//! where the configuration does not allow it. `TlsTransport` is a `conn::Transport` over any
//! other: rustls's record layer driven by the connection's own poll loop, with no task and no
//! copy beyond rustls's buffers.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context as _;
use pinswitch_protocol::tls::{read_certs, read_key};
use rustls::ServerConnection;
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsSection;
use crate::conn::Transport;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1).
pub(crate) const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// One read of encrypted input: a full TLS record and then some.
const TLS_IN_BYTES: usize = 18 * 1024;

/// Encrypted bytes waiting for the socket; past this the transport takes no more plaintext.
const TLS_OUT_BYTES_MAX: usize = 256 * 1024;

/// The server's TLS configuration from `[tls]`: TLS 1.3 only; with `client_ca_pem`, a client
/// certificate signed by that authority is required (mutual TLS).
pub(crate) fn server_config(tls: &TlsSection) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(Path::new(&tls.cert_pem)).context("[tls] cert_pem")?;
    let key = read_key(Path::new(&tls.key_pem)).context("[tls] key_pem")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?;
    let builder = if tls.client_ca_pem.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(Path::new(&tls.client_ca_pem)).context("[tls] client_ca_pem")? {
            roots.add(cert).context("[tls] client_ca_pem")?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("[tls] client_ca_pem")?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder.with_single_cert(certs, key).context("[tls] cert_pem and key_pem")?;
    Ok(Arc::new(config))
}

/// The first DNS name of a verified client certificate: the identity `[access]` maps to roles
/// (TLS on TCP and QUIC alike).
pub(crate) fn certificate_name(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().next().map(str::to_owned)
}

/// A TLS session over a byte stream.
pub(crate) struct TlsTransport<T> {
    inner: T,
    session: ServerConnection,
    /// Encrypted bytes not yet taken by `inner`, from `out_start`.
    out: Vec<u8>,
    out_start: usize,
    /// Bytes already read from `inner` before the session existed (the sniffed first bytes).
    prefix: Vec<u8>,
    /// Where encrypted input lands before rustls takes it (allocated once, not per read).
    input: Box<[u8]>,
    inner_done: bool,
}

impl<T: Transport> TlsTransport<T> {
    pub(crate) fn new(
        inner: T,
        config: Arc<rustls::ServerConfig>,
        prefix: Vec<u8>,
    ) -> io::Result<TlsTransport<T>> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsTransport {
            inner,
            session,
            out: Vec::new(),
            out_start: 0,
            prefix,
            input: vec![0u8; TLS_IN_BYTES].into_boxed_slice(),
            inner_done: false,
        })
    }

    /// The first DNS name of the verified client certificate (mutual TLS), once the handshake
    /// is done.
    pub(crate) fn peer_name(&self) -> Option<String> {
        certificate_name(self.session.peer_certificates()?.first()?)
    }

    /// Moves encrypted output to `inner`: Ready once all of it is written.
    fn poll_flush_out(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.session.wants_write() && self.out.len() < TLS_OUT_BYTES_MAX {
                self.session.write_tls(&mut self.out)?;
            }
            if self.out_start == self.out.len() {
                self.out.clear();
                self.out_start = 0;
                return Poll::Ready(Ok(()));
            }
            match self.inner.poll_write(cx, &self.out[self.out_start..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_start += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Feeds what `inner` has to the session: Ready(true) when records were processed,
    /// Ready(false) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<bool>> {
        if !self.prefix.is_empty() {
            let prefix = std::mem::take(&mut self.prefix);
            return Poll::Ready(self.take_tls(&prefix).map(|()| true));
        }
        if self.inner_done {
            return Poll::Ready(Ok(false));
        }
        let mut input = std::mem::take(&mut self.input);
        let read = self.inner.poll_read(cx, &mut input);
        let taken = match read {
            Poll::Ready(Ok(n)) if n > 0 => Some(self.take_tls(&input[..n])),
            _ => None,
        };
        self.input = input;
        if let Some(taken) = taken {
            return Poll::Ready(taken.map(|()| true));
        }
        match read {
            Poll::Ready(Ok(_)) => {
                self.inner_done = true;
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn take_tls(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.session.read_tls(&mut bytes)?;
            if let Err(error) = self.session.process_new_packets() {
                // Tell the peer why (the alert is queued), then fail the connection.
                while self.session.wants_write() {
                    self.session.write_tls(&mut self.out)?;
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
        Ok(())
    }

    /// Drives the handshake: Ready(Ok) once it is complete.
    pub(crate) fn poll_handshake(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Poll::Ready(Err(error)) = self.poll_flush_out(cx) {
                return Poll::Ready(Err(error));
            }
            if !self.session.is_handshaking() {
                return self.poll_flush_out(cx);
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Poll::Ready(Err(error)) => {
                    let _ = self.poll_flush_out(cx);
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: Transport> Transport for TlsTransport<T> {
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            // Output encrypted earlier goes out whenever the connection polls.
            if let Poll::Ready(Err(error)) = self.poll_flush_out(cx) {
                return Poll::Ready(Err(error));
            }
            match self.session.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(true)) => {}
                // The peer closed without close_notify: the end of its input.
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(error)) = self.poll_flush_out(cx) {
            return Poll::Ready(Err(error));
        }
        // Backpressure: while the socket has not taken what was encrypted, take nothing new.
        if self.out.len() - self.out_start >= TLS_OUT_BYTES_MAX {
            return Poll::Pending;
        }
        let n = self.session.writer().write(buf)?;
        if let Poll::Ready(Err(error)) = self.poll_flush_out(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_close(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.session.send_close_notify();
        match self.poll_flush_out(cx) {
            Poll::Ready(Ok(())) => self.inner.poll_close(cx),
            other => other,
        }
    }
}
