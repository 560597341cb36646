//! The `ipsec` command: protect and unprotect pcap captures with the SAs of an SA file,
//! audit a capture against a policy, answer questions about a policy file (`policy
//! lint|firewall|test|explain|lookup`), run the branch-office demonstration, and measure
//! throughput.
//!
//! Exit codes: 0 success; 1 a failure (a demo expectation did not hold, an output file
//! could not be written, `--strict` with dropped packets, a plaintext leak, unknown SPI
//! or unencrypted ESP found by `pcap audit`, a lint error finding, a failed policy test
//! case, an unreadable flow line in `policy lookup`); 2 a usage or configuration error
//! (bad arguments, unreadable or invalid SA file, policy file, cases file or capture);
//! 3 `pcap audit` inconclusive: no problem found, but packets it could not read.
//!
//! When the reader of standard output goes away (`ipsec ... | head`), a command ends
//! quietly: no message, no panic, files written in full, and the exit code its whole
//! run earns (`output` module).

mod audit;
mod bench;
mod demo;
mod netpkt;
mod output;
mod pcap;
mod pcap_cmd;
mod policy_cmd;
mod seq_file;
mod text;

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

    /// A failure to write standard output (a full disk behind a redirection, ...).
    /// EPIPE never gets here: [`output::Stdout`] takes it as the reader having gone.
    pub(crate) fn output(e: std::io::Error) -> Self {
        CliError::failure(format!("writing the output: {e}"))
    }
}

/// How a command that ran to its end went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Everything as expected.
    Ok,
    /// The command ran but something it checks did not hold (exit 1).
    Failed(String),
    /// The command ran, found nothing wrong, but could not check everything (exit 3).
    Inconclusive(String),
}

#[derive(Parser, Debug)]
#[command(
    name = "ipsec",
    version,
    about = "IPsec data-plane tool: pcap transforms and audit, policy tools, demo, benchmark"
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
    Demo {
        /// The head office's policy file (default: ./examples/branch-office.toml if it
        /// exists, else the copy built into the binary).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Questions about a policy file.
    Policy {
        #[command(subcommand)]
        op: PolicyOp,
    },
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

/// `pcap encrypt`'s options: the common ones and where its sequence numbers start.
#[derive(clap::Args, Debug)]
struct EncryptOpts {
    #[command(flatten)]
    common: PcapOpts,
    /// Continue after this sequence number (the last one already used with this SA,
    /// as the SA file's `seq` means it): the first packet gets N+1. Not below the
    /// file's `seq`.
    #[arg(long, value_name = "N")]
    seq_from: Option<u64>,
    /// Write the last sequence number used back into the SA file (only that SA's
    /// `seq`; the rest of the file stays as written), so that the next run continues
    /// after it instead of repeating the AEAD nonces.
    #[arg(long)]
    save_seq: bool,
}

#[derive(Subcommand, Debug)]
enum PcapOp {
    /// Protect every packet with the outbound SA (the first one, or --name). Sequence
    /// numbers (the AEAD nonces) start after the SA file's `seq`, on every run: use
    /// --save-seq or --seq-from to continue, never the same numbers twice.
    Encrypt(EncryptOpts),
    /// Unprotect every packet with the inbound SA its SPI names.
    Decrypt(PcapOpts),
    /// Check a capture taken between the gateways: cleartext that a PROTECT policy
    /// covers (a leak), ESP of an SPI not in the file or of an SA that does not encrypt
    /// (exit 1 for any of these), ESP per SPI, IKE, packets no policy allows; packets it
    /// could not read make it inconclusive (exit 3).
    Audit {
        /// The policy file (`[[policy]]` and `[[sa]]` tables).
        #[arg(value_name = "POLICY.toml")]
        policy: PathBuf,
        /// The capture (classic pcap; Ethernet or raw IP link type).
        #[arg(value_name = "CAPTURE.pcap")]
        capture: PathBuf,
        /// One JSON object per finding, then a summary object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyOp {
    /// Every problem of a policy file at once (shadowed, redundant, conflicting rules,
    /// no catch-all, IKE blocked, ...), load errors included; exit 1 on an error.
    Lint {
        /// The policy file.
        #[arg(value_name = "FILE")]
        policy: PathBuf,
        /// One JSON object per finding (code, severity, policy, message).
        #[arg(long)]
        json: bool,
        /// Work budget of the analyses that compare policies, in steps (a few ns
        /// each): past it they stop with a `budget` finding instead of running long
        /// on a hostile file [default: 400000000].
        #[arg(long, value_name = "STEPS")]
        budget: Option<u64>,
    },
    /// What a firewall between the gateways must let through (UDP 500, UDP 4500 with
    /// NAT-T, IP protocol 50 for ESP, 51 for AH).
    Firewall {
        /// The policy file.
        #[arg(value_name = "FILE")]
        policy: PathBuf,
        /// One JSON object per opening.
        #[arg(long)]
        json: bool,
    },
    /// Check a cases file (`[[case]]` ... `expect = ...`) against the policy; exit 1 when
    /// a case fails.
    Test {
        /// The policy file.
        #[arg(value_name = "FILE")]
        policy: PathBuf,
        /// The cases file.
        #[arg(value_name = "CASES")]
        cases: PathBuf,
        /// One JSON object per case, then a summary object.
        #[arg(long)]
        json: bool,
    },
    /// Boundary probes: for each rule, flows just inside and just outside each of its
    /// ranges, and what they hit.
    Explain {
        /// The policy file.
        #[arg(value_name = "FILE")]
        policy: PathBuf,
        /// One JSON object per probe.
        #[arg(long)]
        json: bool,
    },
    /// Look flows up: one JSON decision per line of a CSV file
    /// (direction,src,dst,protocol,src_port,dst_port).
    Lookup {
        /// The policy file.
        #[arg(value_name = "FILE")]
        policy: PathBuf,
        /// The flows, one CSV line each (`-` for stdin).
        #[arg(long, value_name = "FLOWS.csv")]
        flows: PathBuf,
        /// Answer through the SPD flow cache (RFC 4301 SPD cache).
        #[arg(long)]
        cache: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Policy { op } => match op {
            PolicyOp::Lookup {
                policy,
                flows,
                cache,
            } => policy_cmd::lookup(policy, flows, *cache),
            PolicyOp::Lint {
                policy,
                json,
                budget,
            } => policy_cmd::lint(policy, *json, *budget),
            PolicyOp::Firewall { policy, json } => policy_cmd::firewall(policy, *json),
            PolicyOp::Test {
                policy,
                cases,
                json,
            } => policy_cmd::test(policy, cases, *json),
            PolicyOp::Explain { policy, json } => policy_cmd::explain(policy, *json),
        },
        Command::Pcap { op } => match op {
            PcapOp::Audit {
                policy,
                capture,
                json,
            } => audit::run(policy, capture, *json),
            PcapOp::Encrypt(EncryptOpts {
                common: o,
                seq_from,
                save_seq,
            }) => pcap_cmd::run(&pcap_cmd::PcapArgs {
                op: pcap_cmd::Op::Encrypt,
                sa_file: &o.sa,
                input: &o.input,
                output: &o.output,
                name: o.name.as_deref(),
                json: o.json,
                strict: o.strict,
                seq: pcap_cmd::SeqStart {
                    from: *seq_from,
                    save: *save_seq,
                },
            }),
            PcapOp::Decrypt(o) => pcap_cmd::run(&pcap_cmd::PcapArgs {
                op: pcap_cmd::Op::Decrypt,
                sa_file: &o.sa,
                input: &o.input,
                output: &o.output,
                name: o.name.as_deref(),
                json: o.json,
                strict: o.strict,
                seq: pcap_cmd::SeqStart::default(),
            }),
        },
        Command::Demo { policy } => demo::run(policy.as_deref()),
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
    // Messages may quote user text (a field, a value the library repeats): shortened.
    let report = |prefix: &str, msg: &str| {
        output::eprint_line(&format!("ipsec: {prefix}{}", text::clip_message(msg)));
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(msg)) => {
            report("FAILED: ", &msg);
            ExitCode::from(1)
        }
        Ok(Outcome::Inconclusive(msg)) => {
            report("INCONCLUSIVE: ", &msg);
            ExitCode::from(3)
        }
        Err(e) => {
            if !e.message.is_empty() {
                report("error: ", &e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
