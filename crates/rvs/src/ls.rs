//! `rvs ls`: the live table from a running rvs's admin API.

use std::net::SocketAddr;
use std::process::ExitCode;

pub async fn ls(admin: SocketAddr, connections: bool, json: bool) -> anyhow::Result<ExitCode> {
    if connections {
        let conns = rvs_admin::fetch_connections(admin).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&conns)?);
        } else {
            print!("{}", rvs_admin::format_connections(&conns));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let table = rvs_admin::fetch_table(admin).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        print!("{}", rvs_admin::format_table(&table));
    }
    Ok(ExitCode::SUCCESS)
}
