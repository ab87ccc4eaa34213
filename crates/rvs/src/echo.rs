//! `rvs echo`: a tiny backend that says who it is and which client it saw. HTTP, raw TCP
//! (a greeting line, then everything echoed back, half-close honoured) and UDP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Args, Clone)]
pub struct EchoArgs {
    /// The name this backend answers with.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Serve HTTP/1.1 on these addresses.
    #[arg(long = "listen", alias = "http")]
    http: Vec<SocketAddr>,
    /// Serve raw TCP on these addresses: a line "NAME CLIENT", then an echo.
    #[arg(long)]
    tcp: Vec<SocketAddr>,
    /// Serve UDP on these addresses: each datagram answered with "NAME CLIENT PAYLOAD".
    #[arg(long)]
    udp: Vec<SocketAddr>,
    /// Expect a PROXY protocol v2 header and report the client it names.
    #[arg(long)]
    proxy_protocol: bool,
}

pub async fn echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    if args.http.is_empty() && args.tcp.is_empty() && args.udp.is_empty() {
        anyhow::bail!("give at least one of --listen (HTTP), --tcp, --udp");
    }
    let args = Arc::new(args);
    let mut tasks = tokio::task::JoinSet::new();
    for addr in args.http.clone() {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--listen {addr}"))?;
        tasks.spawn(serve_tcp(listener, args.clone(), true));
    }
    for addr in args.tcp.clone() {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--tcp {addr}"))?;
        tasks.spawn(serve_tcp(listener, args.clone(), false));
    }
    for addr in args.udp.clone() {
        let socket = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("--udp {addr}"))?;
        tasks.spawn(serve_udp(socket, args.clone()));
    }
    println!(
        "rvs echo {}: http {:?} tcp {:?} udp {:?}",
        args.name, args.http, args.tcp, args.udp
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tasks.join_next() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve_tcp(listener: TcpListener, args: Arc<EchoArgs>, http: bool) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let args = args.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if http {
                serve_http(stream, peer, args).await;
            } else {
                let _ = serve_raw(stream, peer, args).await;
            }
        });
    }
}

/// Reads a PROXY v2 header when expected; the client it names, or the peer.
async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    args: &EchoArgs,
) -> std::io::Result<SocketAddr> {
    if !args.proxy_protocol {
        return Ok(peer);
    }
    let mut header = vec![0u8; 16];
    stream.read_exact(&mut header).await?;
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(16 + len, 0);
    stream.read_exact(&mut header[16..]).await?;
    match rvs_l4::parse_v2(&header) {
        Ok(Some(h)) => Ok(h.source),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad PROXY v2 header",
        )),
    }
}

async fn serve_http(mut stream: TcpStream, peer: SocketAddr, args: Arc<EchoArgs>) {
    let Ok(client) = client_of(&mut stream, peer, &args).await else {
        return;
    };
    let name = args.name.clone();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let body = format!("{name} {client} {} {}\n", req.method(), req.uri());
        let response = Response::builder()
            .header("x-echo-name", name.as_str())
            .header("x-echo-client", client.to_string())
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body)));
        async move {
            Ok::<_, Infallible>(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn serve_raw(
    mut stream: TcpStream,
    peer: SocketAddr,
    args: Arc<EchoArgs>,
) -> std::io::Result<()> {
    let client = client_of(&mut stream, peer, &args).await?;
    stream
        .write_all(format!("{} {client}\n", args.name).as_bytes())
        .await?;
    let (mut read, mut write) = stream.split();
    tokio::io::copy(&mut read, &mut write).await?;
    write.shutdown().await
}

async fn serve_udp(socket: UdpSocket, args: Arc<EchoArgs>) {
    let mut buf = vec![0u8; 65_535];
    // With PROXY protocol a flow announces its client once, in its first datagram.
    let mut announced: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let data = &buf[..len];
        if args.proxy_protocol {
            if let Ok(Some(h)) = rvs_l4::parse_v2(data) {
                announced.insert(peer, h.source);
                continue;
            }
        }
        let client = announced.get(&peer).copied().unwrap_or(peer);
        let mut reply = format!("{} {client} ", args.name).into_bytes();
        reply.extend_from_slice(data);
        let _ = socket.send_to(&reply, peer).await;
    }
}
