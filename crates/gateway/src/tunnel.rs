//! Upgraded connections (WebSocket and others): bytes both ways until either side closes or
//! both are silent for the idle timeout (nginx: `proxy_read_timeout` on the tunnel).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const BUFFER: usize = 16 * 1024;

pub async fn join<C, U>(client: C, upstream: U, idle: Duration) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let mut up = vec![0u8; BUFFER];
    let mut down = vec![0u8; BUFFER];
    let (mut client_open, mut upstream_open) = (true, true);
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    while client_open || upstream_open {
        tokio::select! {
            n = client_read.read(&mut up), if client_open => {
                let n = n?;
                if n == 0 {
                    client_open = false;
                    upstream_write.shutdown().await?;
                } else {
                    upstream_write.write_all(&up[..n]).await?;
                }
            }
            n = upstream_read.read(&mut down), if upstream_open => {
                let n = n?;
                if n == 0 {
                    upstream_open = false;
                    client_write.shutdown().await?;
                } else {
                    client_write.write_all(&down[..n]).await?;
                }
            }
            () = &mut deadline => return Ok(()),
        }
        deadline.as_mut().reset(Instant::now() + idle);
    }
    Ok(())
}
