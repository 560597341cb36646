//! The `ipsec` command: protect and unprotect pcap captures with the SAs of an SA file,
//! run the branch-office demonstration, and measure throughput.
//!
//! Exit codes: 0 success; 1 a failure (a demo expectation did not hold, an output file
//! could not be written, `--strict` with dropped packets); 2 a usage or configuration
//! error (bad arguments, unreadable or invalid SA file or capture).

mod bench;
mod demo;
mod netpkt;
mod pcap;
mod pcap_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// An error that ends the command, with its exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// A usage or configuration error (exit 2).
    pub(crate) fn usage(message: String) -> Self {
        CliError { code: 2, message }
    }

    /// A runtime failure (exit 1).
    pub(crate) fn failure(message: String) -> Self {
        CliError { code: 1, message }
    }
}

/// How a command that ran to its end went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Everything as expected.
    Ok,
    /// The command ran but something it checks did not hold (exit 1).
    Failed(String),
}

#[derive(Parser, Debug)]
#[command(
    name = "ipsec",
    version,
    about = "IPsec data-plane tool: pcap transforms, demo, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encrypt or decrypt the packets of a pcap capture with the SAs of an SA file.
    Pcap {
        #[command(subcommand)]
        op: PcapOp,
    },
    /// The branch-office scenario end to end: policy, encryption, attacks, SA monitor.
    Demo,
    /// Encrypt/decrypt throughput per cipher, packet size and burst, and raw AEAD cost.
    Bench {
        /// Print one JSON record per measurement instead of the table.
        #[arg(long)]
        json: bool,
        /// Time budget per measured case, in seconds (default 0.12; the less important
        /// ciphers get a third of it).
        #[arg(long, default_value_t = 0.12)]
        seconds: f64,
        /// Also run `openssl speed -evp` on the same ciphers and sizes (adds ~10 s).
        #[arg(long)]
        openssl: bool,
    },
}

#[derive(clap::Args, Debug)]
struct PcapOpts {
    /// The SA file (`[[sa]]` tables).
    #[arg(long = "sa", value_name = "SA.toml")]
    sa: PathBuf,
    /// Use this SA (encrypt: the outbound SA; decrypt: the only inbound SA tried).
    #[arg(long)]
    name: Option<String>,
    /// One JSON object per input packet on stdout; the summary goes to stderr.
    #[arg(long)]
    json: bool,
    /// Exit 1 when any packet was dropped.
    #[arg(long)]
    strict: bool,
    /// The capture to read (classic pcap; Ethernet, raw IP, IPv4 or IPv6 link type).
    input: PathBuf,
    /// The capture to write.
    output: PathBuf,
}

#[derive(Subcommand, Debug)]
enum PcapOp {
    /// Protect every packet with the outbound SA (the first one, or --name).
    Encrypt(PcapOpts),
    /// Unprotect every packet with the inbound SA its SPI names.
    Decrypt(PcapOpts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Pcap { op } => {
            let (op, o) = match op {
                PcapOp::Encrypt(o) => (pcap_cmd::Op::Encrypt, o),
                PcapOp::Decrypt(o) => (pcap_cmd::Op::Decrypt, o),
            };
            pcap_cmd::run(&pcap_cmd::PcapArgs {
                op,
                sa_file: &o.sa,
                input: &o.input,
                output: &o.output,
                name: o.name.as_deref(),
                json: o.json,
                strict: o.strict,
            })
        }
        Command::Demo => demo::run(),
        Command::Bench {
            json,
            seconds,
            openssl,
        } => {
            if !(seconds.is_finite() && *seconds > 0.0 && *seconds <= 60.0) {
                Err(CliError::usage(format!(
                    "--seconds {seconds}: must be a number of seconds above 0 and at most 60"
                )))
            } else {
                bench::run(*json, *seconds, *openssl)
            }
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(msg)) => {
            eprintln!("ipsec: FAILED: {msg}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ipsec: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
