//! The `authsync` command: parse the command line, load config, run.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use authsync::accounts::api_keys::{new_api_key, sha256_hex};
use authsync::crypto::keyring;
use authsync::node::local_cluster::DemoOptions;
use authsync::node::process;

mod cli;

use cli::{admin_client, api_keys, dlq, oauth_clients};

#[derive(Parser)]
#[command(
    name = "authsync",
    version,
    about = "Multi-region authentication store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one region's node.
    Node {
        /// The node's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run three regions with no setup: an embedded broker, generated keys, temporary
    /// data, a printed API key.
    Demo {
        /// Keep keys and data in this directory across restarts.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Use this API key instead of generating one.
        #[arg(long)]
        api_key: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Port of the first region; the others take the next ones (0: any free port).
        #[arg(long, default_value_t = 8081)]
        port: u16,
        /// Use the Kafka-protocol broker at HOST:PORT instead of the embedded one.
        #[arg(long)]
        kafka: Option<String>,
        /// Expose the fault switches (/v1/admin/faults) on every node, for chaos tests.
        #[arg(long)]
        faults: bool,
    },
    /// Manage keyrings and API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Load a three-region cluster end to end and measure it beside the machine's
    /// floors (raw RocksDB puts, the envelope, the password hash, a Kafka round trip).
    Bench(cli::bench::BenchOptions),
    /// Inspect and act on a node's dead letters (and its retry queue).
    Dlq {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: DlqCommand,
    },
    /// Add, list and revoke a running cluster's API keys (no restart needed).
    ApiKeys {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: ApiKeysCommand,
    },
    /// Register, list and remove the platforms that sign customers in through the
    /// OpenID Connect provider (OAuth clients; no restart needed).
    OauthClients {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: OauthClientsCommand,
    },
}

/// How a command reaches a running node.
#[derive(clap::Args)]
struct NodeArgs {
    /// The node's HTTP address.
    #[arg(
        long,
        env = "AUTHSYNC_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    url: String,
    /// An API key of the node (with the admin scope).
    #[arg(
        long,
        env = "AUTHSYNC_API_KEY",
        hide_env_values = true,
        global = true,
        allow_hyphen_values = true
    )]
    api_key: Option<String>,
    /// A PEM CA bundle to trust for an https:// URL, besides the system's roots.
    #[arg(long, env = "AUTHSYNC_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
}

impl NodeArgs {
    /// The URL, key and CA, checked.
    fn checked(self) -> anyhow::Result<admin_client::NodeAddress> {
        admin_client::check_url(&self.url)?;
        match self.api_key.filter(|k| !k.is_empty()) {
            Some(api_key) => Ok(admin_client::NodeAddress {
                url: self.url,
                api_key,
                ca_cert: self.ca_cert,
            }),
            None => anyhow::bail!("an API key is required: --api-key or AUTHSYNC_API_KEY"),
        }
    }
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// List every key the node knows (id, name, scopes, source, revoked or live).
    List,
    /// Add a key, live at once in every region; the key is printed once.
    Add {
        #[arg(long)]
        name: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Revoke a key (runtime or config) by its id, in every region.
    Revoke { id: String },
    /// Publish a new access token signing key for the node's region; it signs after
    /// `tokens.publish_lead_s`, and the current key stops signing then.
    RotateSigningKey,
}

#[derive(Subcommand)]
enum OauthClientsCommand {
    /// List every live client (id, name, kind, scopes, redirect URIs).
    List,
    /// Register a client, live at once in every region; a confidential client's
    /// secret is printed once.
    Add {
        #[arg(long)]
        name: String,
        /// Exact redirect URIs, comma-separated (https, or http to a loopback address).
        #[arg(long, value_delimiter = ',', required = true)]
        redirect_uris: Vec<String>,
        /// Where a sign-out may return to, comma-separated.
        #[arg(long, value_delimiter = ',')]
        post_logout_redirect_uris: Vec<String>,
        /// Comma-separated, from openid, email, phone, profile, offline_access
        /// (default openid, email, profile).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// No secret: an app that cannot keep one (PKCE alone).
        #[arg(long)]
        public: bool,
        /// One of the group's own platforms: no consent asked.
        #[arg(long)]
        first_party: bool,
        /// A JSON file with the client's public keys (a JWK set of 1 to 4 Ed25519,
        /// P-256 or RSA keys): it then authenticates with private_key_jwt
        /// assertions signed by them, and gets no secret.
        #[arg(long)]
        jwks: Option<std::path::PathBuf>,
        /// The alg of its ID tokens: EdDSA (default) or ES256.
        #[arg(long)]
        id_token_alg: Option<String>,
    },
    /// Remove a client by its id, in every region: its secret, codes and refresh
    /// tokens stop working.
    Remove { id: String },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first (with --retry: events waiting for a retry).
    List {
        #[arg(long)]
        retry: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this entry id (paging).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Show one dead letter with its attempt history.
    Show { id: u64 },
    /// Apply one dead letter now (after its cause was fixed).
    Replay { id: u64 },
    /// Delete one dead letter.
    Drop { id: u64 },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a keyring (mode 0600) for each region into a directory.
    Init {
        /// Region names, comma- or space-separated.
        #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
        regions: Vec<String>,
        /// Directory for the keyring files.
        #[arg(long, alias = "dir", default_value = "config/keys")]
        out: PathBuf,
        /// Replace keyrings that already exist (their data becomes unreadable).
        #[arg(long)]
        force: bool,
    },
    /// Add a new master key version for a region; older versions still decrypt.
    Rotate {
        #[arg(long)]
        region: String,
        /// Directory holding the keyrings; peers' copies of the wrapping key are updated.
        #[arg(long, alias = "out", default_value = "config/keys")]
        dir: PathBuf,
    },
    /// Upgrade a directory of format 1 keyrings (every peer's AES key in every file) to
    /// format 2: an X25519 master key and an Ed25519 signing key per region, only
    /// peers' public keys in each file. With --finish, end the window in which
    /// unsigned events from format 1 nodes are still accepted.
    Upgrade {
        /// Directory holding every region's keyring.
        #[arg(long, alias = "out", default_value = "config/keys")]
        dir: PathBuf,
        /// Stop accepting unsigned events: run once every node runs its format 2 keyring.
        #[arg(long)]
        finish: bool,
    },
    /// Destroy an old master key version of a region, once its node reports that
    /// nothing still uses it: whatever it sealed, backups included, stays sealed.
    Retire {
        #[arg(long)]
        region: String,
        /// The version to destroy (not the active one).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        version: u32,
        /// Directory holding the region's keyring.
        #[arg(long, alias = "out", default_value = "config/keys")]
        dir: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Print a new random API key and the SHA-256 line for a node config.
    ApiKey {
        /// Name for the config entry.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    process::keep_large_allocations_mapped();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, never a backtrace: what an
            // operator or a supervisor reads.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    process::init_logging();
    match cli.command {
        Command::Node { config } => process::run_node(&config).await?,
        Command::Demo {
            data_dir,
            api_key,
            host,
            port,
            kafka,
            faults,
        } => {
            let shutdown = CancellationToken::new();
            process::stop_on_signals(shutdown.clone());
            cli::demo::run(
                DemoOptions {
                    data_dir,
                    api_key,
                    host,
                    base_port: port,
                    kafka,
                    faults,
                    anti_entropy: true,
                },
                shutdown,
            )
            .await?;
        }
        Command::Keys(KeysCommand::Init {
            regions,
            out,
            force,
        }) => {
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            for r in &regions {
                let path = keyring::keyring_path(&out, r);
                if path.exists() && !force {
                    anyhow::bail!("{} exists; pass --force to replace it", path.display());
                }
            }
            for ring in keyring::init(&regions)? {
                let path = keyring::keyring_path(&out, ring.owner());
                ring.save(&path)?;
                println!("wrote {}", path.display());
            }
        }
        Command::Keys(KeysCommand::Retire {
            region,
            version,
            dir,
            node,
        }) => {
            cli::keys::retire_key(&node.checked()?, &dir, &region, version).await?;
        }
        Command::Keys(KeysCommand::Upgrade { dir, finish: false }) => {
            let upgraded = keyring::upgrade_in_dir(&dir)?;
            if upgraded.is_empty() {
                println!("every keyring in {} is format 2 already", dir.display());
            }
            for u in upgraded {
                println!(
                    "region {}: X25519 master key v{} is active, AES v{:?} decrypt only until \
                     retired; Ed25519 signing key s1",
                    u.region, u.active, u.legacy
                );
            }
            println!(
                "next: give each node its new keyring (it reloads it), let key recovery move \
                 every wrap, `authsync keys retire` the old versions, then `authsync keys \
                 upgrade --finish`"
            );
        }
        Command::Keys(KeysCommand::Upgrade { dir, finish: true }) => {
            let changed = keyring::finish_upgrade_in_dir(&dir)?;
            println!(
                "unsigned events are refused from now on by {}",
                if changed.is_empty() {
                    "every keyring (already)".to_string()
                } else {
                    changed.join(", ")
                }
            );
        }
        Command::Keys(KeysCommand::Rotate { region, dir }) => {
            let version = keyring::rotate_in_dir(&dir, &region)?;
            println!(
                "region {region}: master key v{version} is active; older versions decrypt only"
            );
        }
        Command::Bench(options) => {
            let out = options.out.clone();
            let report = cli::bench::run(options).await?;
            print!("{}", cli::bench::table(&report));
            println!("report: {}", out.display());
        }
        Command::Dlq { node, action } => {
            let node = node.checked()?;
            let action = match action {
                DlqCommand::List {
                    retry,
                    limit,
                    after,
                } => dlq::Action::List {
                    retry,
                    limit,
                    after,
                },
                DlqCommand::Show { id } => dlq::Action::Show { id },
                DlqCommand::Replay { id } => dlq::Action::Replay { id },
                DlqCommand::Drop { id } => dlq::Action::Drop { id },
            };
            dlq::run(&node, action).await?;
        }
        Command::ApiKeys { node, action } => {
            let node = node.checked()?;
            let action = match action {
                ApiKeysCommand::List => api_keys::KeysAction::List,
                ApiKeysCommand::Add { name, scopes } => api_keys::KeysAction::Add { name, scopes },
                ApiKeysCommand::Revoke { id } => api_keys::KeysAction::Revoke { id },
                ApiKeysCommand::RotateSigningKey => api_keys::KeysAction::RotateSigningKey,
            };
            api_keys::run(&node, action).await?;
        }
        Command::OauthClients { node, action } => {
            let node = node.checked()?;
            let action = match action {
                OauthClientsCommand::List => oauth_clients::ClientsAction::List,
                OauthClientsCommand::Add {
                    name,
                    redirect_uris,
                    post_logout_redirect_uris,
                    scopes,
                    public,
                    first_party,
                    jwks,
                    id_token_alg,
                } => oauth_clients::ClientsAction::Add {
                    name,
                    redirect_uris,
                    post_logout_redirect_uris,
                    scopes,
                    public,
                    first_party,
                    jwks_file: jwks,
                    id_token_alg,
                },
                OauthClientsCommand::Remove { id } => oauth_clients::ClientsAction::Remove { id },
            };
            oauth_clients::run(&node, action).await?;
        }
        Command::Keys(KeysCommand::ApiKey { name }) => {
            let key = new_api_key()?;
            println!("api key (give to the caller): {key}");
            println!();
            println!("[[api_keys]]");
            println!("name = \"{name}\"");
            println!("sha256 = \"{}\"", sha256_hex(&key));
        }
    }
    Ok(())
}
