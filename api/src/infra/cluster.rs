//! The private PostgreSQL cluster: initialised, started and stopped by Custos itself from the
//! machine's PostgreSQL server binaries, listening only on a Unix socket in the data directory.
//!
//! Started as root, the cluster runs as an unprivileged system user (`postgres`, else
//! `nobody`), because `initdb` and `postgres` refuse to run as root. A watchdog process stops
//! the cluster if the service dies without stopping it; a cluster left running or a stale
//! `postmaster.pid` from a killed service is recovered on the next start.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

/// The superuser `initdb` creates; the service connects as it to provision tenants.
pub(crate) const SUPERUSER: &str = "custos";
/// The port number names the socket file (`.s.PGSQL.<port>`); no TCP port is opened.
const PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries found. Custos runs its own private PostgreSQL cluster \
         when DATABASE_URL is not set, and needs the server programs `initdb`, `pg_ctl` and \
         `postgres` (version 14 or newer). Install them (Debian/Ubuntu: `apt-get install \
         postgresql`; Fedora: `dnf install postgresql-server`; macOS: `brew install \
         postgresql@16`), or put their directory on PATH or in CUSTOS_PG_BIN_DIR, or set \
         DATABASE_URL to a PostgreSQL server Custos may administer."
    )]
    BinariesNotFound,
    #[error("running as root, but no unprivileged user (`postgres` or `nobody`) exists to run PostgreSQL as")]
    NoUnprivilegedUser,
    #[error(
        "PostgreSQL must run as the unprivileged user `{user}`, which cannot reach {path}: \
         choose a data directory under a path it can traverse (e.g. --data-dir /var/lib/custos) \
         or allow it with `chmod o+x {path}`"
    )]
    Unreachable { user: String, path: PathBuf },
    #[error(
        "the socket path {0} is longer than Unix allows (107 bytes): choose a shorter --data-dir"
    )]
    SocketPathTooLong(PathBuf),
    #[error("another Custos process is using the data directory {0}")]
    InUse(PathBuf),
    #[error("{0} process(es) of the stopped PostgreSQL server are still running")]
    StillRunning(usize),
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Finds a directory holding `initdb`, `pg_ctl` and `postgres`: `CUSTOS_PG_BIN_DIR`, then PATH,
/// then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let explicit = std::env::var_os("CUSTOS_PG_BIN_DIR").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let candidates = explicit
        .into_iter()
        .chain(on_path)
        .chain(from_pg_config)
        .chain(versioned_bin_dirs(Path::new("/usr/lib/postgresql")));
    first_with_server(candidates).ok_or(ClusterError::BinariesNotFound)
}

/// `<root>/<major>/bin` for every numeric `<major>`, newest first.
fn versioned_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort();
    versioned.into_iter().rev().map(|(_, dir)| dir).collect()
}

/// The first directory that holds all three server programs.
fn first_with_server(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|dir| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    })
}

/// The OS user the cluster's processes run as.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

fn run_as() -> Result<Option<RunAs>, ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map(|user| {
            Some(RunAs {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        })
        .ok_or(ClusterError::NoUnprivilegedUser)
}

/// The machine's PostgreSQL programs, and the user they run as (an unprivileged one when this
/// process is root): for the cluster and for the backup tools.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
}

impl Tools {
    pub(crate) fn find() -> Result<Self, ClusterError> {
        Ok(Self {
            bin_dir: find_bin_dir()?,
            run_as: run_as()?,
        })
    }

    /// Where `program` is: beside the server programs, else beside the file they link to
    /// (`/usr/local/bin/postgres` may be a link into `/usr/lib/postgresql/15/bin`, which has
    /// the backup tools of the same version), else found on PATH.
    fn program(&self, program: &str) -> PathBuf {
        let linked = self
            .bin_dir
            .join("postgres")
            .canonicalize()
            .ok()
            .and_then(|server| server.parent().map(|dir| dir.join(program)));
        std::iter::once(self.bin_dir.join(program))
            .chain(linked)
            .find(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(program))
    }

    /// `program` from the server's directory, run in `dir` as the cluster's user.
    pub(crate) fn command(&self, program: &str, dir: &Path) -> Command {
        self.as_cluster_user(Command::new(self.program(program)), dir)
    }

    /// `command` run in `dir` as the cluster's user, with a bare environment.
    fn as_cluster_user(&self, mut command: Command, dir: &Path) -> Command {
        command.current_dir(dir);
        clean_environment(&mut command);
        command.env("HOME", dir);
        if let Some(user) = &self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// Like [`Tools::command`], for a long-running tool (`pg_basebackup`): killed when this
    /// process dies (`setpriv --pdeathsig KILL`, where util-linux has it), so a `kill -9`
    /// leaves no orphan writing on.
    pub(crate) fn command_tied(&self, program: &str, dir: &Path) -> Command {
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .map(Path::new)
            .find(|path| path.is_file());
        let Some(setpriv) = setpriv else {
            return self.command(program, dir);
        };
        let mut command = Command::new(setpriv);
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(self.program(program));
        self.as_cluster_user(command, dir)
    }

    /// Runs `command` to its end: its output, or an error with it.
    pub(crate) fn run(&self, mut command: Command) -> Result<String, ClusterError> {
        // The program and its arguments, never its environment (which may carry a password).
        let description = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|part| part.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(io_at(&self.bin_dir))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(ClusterError::Command {
                command: description,
                status: output.status.to_string(),
                output: text.trim().to_owned(),
            })
        }
    }

    /// Gives `path` to the cluster's user (when this process is root), after checking that
    /// user can reach it.
    pub(crate) fn hand_over(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some(user) = &self.run_as {
            check_reachable(user, path)?;
            own(user, path)?;
        }
        Ok(())
    }
}

/// A running private cluster. Dropping it without [`PrivateCluster::stop`] leaves the
/// watchdog to stop PostgreSQL when this process exits.
#[derive(Debug)]
pub struct PrivateCluster {
    server: Server,
    password: SecretString,
    watchdog: Option<(Child, ChildStdin)>,
    /// Set once the cluster is being stopped; held while a [`Supervisor`] restarts the server.
    stopping: Arc<Mutex<bool>>,
    _lock: File,
}

/// Where a cluster's server lives and how its programs run: enough to start and stop it.
#[derive(Debug, Clone)]
struct Server {
    tools: Tools,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
}

impl PrivateCluster {
    /// Initialises (first time) and starts the cluster under `dir`, applying `settings`
    /// (`name = value` lines for `postgresql.conf`). Blocking: call from a blocking context.
    pub fn start(dir: &Path, settings: &[(&str, String)]) -> Result<Self, ClusterError> {
        Self::start_waiting(dir, settings, 60)
    }

    /// [`PrivateCluster::start`], waiting up to `seconds` for the server to answer (a restored
    /// backup answers only once its WAL has been replayed to a consistent state); a server
    /// that does not answer in time is stopped.
    pub(crate) fn start_waiting(
        dir: &Path,
        settings: &[(&str, String)],
        seconds: u32,
    ) -> Result<Self, ClusterError> {
        let tools = Tools::find()?;
        let run_as = tools.run_as.clone();
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let dir = dir.canonicalize().map_err(io_at(dir))?;
        let lock_path = dir.join("custos.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(ClusterError::InUse(dir));
        }
        let socket_dir = dir.join("run");
        let socket = socket_dir.join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ClusterError::SocketPathTooLong(socket));
        }
        let pgdata = dir.join("data");
        let log_file = dir.join("postgres.log");
        for sub in [&socket_dir, &pgdata] {
            fs::create_dir_all(sub).map_err(io_at(sub))?;
            fs::set_permissions(sub, fs::Permissions::from_mode(0o700)).map_err(io_at(sub))?;
        }
        if let Some(user) = &run_as {
            check_reachable(user, &pgdata)?;
            for path in [&socket_dir, &pgdata] {
                own(user, path)?;
            }
            if !log_file.exists() {
                write_private(&log_file, "")?;
            }
            own(user, &log_file)?;
        }
        let password = superuser_password(&dir)?;
        let cluster = Self {
            server: Server {
                tools,
                pgdata,
                socket_dir,
                log_file,
            },
            password,
            watchdog: None,
            stopping: Arc::new(Mutex::new(false)),
            _lock: lock,
        };
        if !cluster.server.pgdata.join("PG_VERSION").exists() {
            cluster.initdb(&dir)?;
        }
        cluster.write_settings(settings)?;
        cluster.server.recover_stale()?;
        cluster.start_server(seconds)
    }

    /// A handle that watches the server and starts it again when it dies, while the service
    /// runs.
    pub fn supervisor(&self) -> Supervisor {
        Supervisor {
            server: self.server.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Options for connecting as the superuser to the `postgres` maintenance database.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.server.socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .password(self.password.expose_secret())
            .database("postgres")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.server.socket_dir
    }

    /// The server's log.
    pub(crate) fn log_file(&self) -> &Path {
        &self.server.log_file
    }

    /// Stops the server (fast shutdown: running transactions are rolled back), after any
    /// restart in progress, and keeps a [`Supervisor`] from starting it again. Blocking.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        *stopping = true;
        let result = self
            .server
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
        drop(stopping);
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
        result.map(|_| ())
    }

    fn initdb(&self, dir: &Path) -> Result<(), ClusterError> {
        let server = &self.server;
        // A previous initdb that died half-way leaves a partial directory: start clean.
        for entry in fs::read_dir(&server.pgdata)
            .map_err(io_at(&server.pgdata))?
            .flatten()
        {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_at(&path))?;
        }
        let pwfile = dir.join("initdb.pw");
        write_private(&pwfile, self.password.expose_secret())?;
        if let Some(user) = &server.tools.run_as {
            own(user, &pwfile)?;
        }
        let mut command = server.command("initdb");
        command
            .arg("-D")
            .arg(&server.pgdata)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale"])
            .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = server.tools.run(command);
        let _ = fs::remove_file(&pwfile);
        result?;
        let conf = server.pgdata.join("postgresql.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_at(&conf))?;
        file.write_all(b"\n# Custos writes its settings here on every start.\ninclude_if_exists = 'custos.conf'\n")
            .map_err(io_at(&conf))?;
        Ok(())
    }

    fn write_settings(&self, settings: &[(&str, String)]) -> Result<(), ClusterError> {
        let server = &self.server;
        let socket_dir = server.socket_dir.display().to_string().replace('\'', "''");
        let mut text = format!(
            "# Written by Custos on every start; edits are lost.\n\
             listen_addresses = ''\nport = {PORT}\nunix_socket_directories = '{socket_dir}'\n"
        );
        for (name, value) in settings {
            text.push_str(&format!("{name} = {value}\n"));
        }
        let path = server.pgdata.join("custos.conf");
        fs::write(&path, text).map_err(io_at(&path))?;
        if let Some(user) = &server.tools.run_as {
            own(user, &path)?;
        }
        Ok(())
    }

    fn start_server(mut self, seconds: u32) -> Result<Self, ClusterError> {
        self.server.start(seconds)?;
        self.watchdog = Some(self.spawn_watchdog()?);
        Ok(self)
    }

    /// A small shell that waits for this process to go away (its stdin reaches EOF when the
    /// pipe's only writer, this process, exits) and then stops the cluster.
    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), ClusterError> {
        let pg_ctl = self.server.tools.bin_dir.join("pg_ctl");
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("trap '' INT TERM HUP; cat >/dev/null; exec \"$0\" -D \"$1\" stop -m fast -w -t 60 >/dev/null 2>&1")
            .arg(&pg_ctl)
            .arg(&self.server.pgdata)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some(user) = &self.server.tools.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        clean_environment(&mut command);
        let mut child = command.spawn().map_err(io_at(&pg_ctl))?;
        let stdin = child.stdin.take().ok_or_else(|| ClusterError::Io {
            path: pg_ctl.clone(),
            source: std::io::Error::other("watchdog has no stdin"),
        })?;
        Ok((child, stdin))
    }
}

impl Server {
    fn command(&self, program: &str) -> Command {
        self.tools
            .command(program, self.pgdata.parent().unwrap_or(&self.pgdata))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String, ClusterError> {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(&self.pgdata).args(args);
        self.tools.run(command)
    }

    /// Deals with what a killed service may have left: a postmaster still running on this
    /// data directory is stopped; a `postmaster.pid` whose process is gone is removed.
    fn recover_stale(&self) -> Result<(), ClusterError> {
        let pid_file = self.pgdata.join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(());
        }
        if postmaster_alive(&self.pgdata) {
            tracing::warn!(
                "stopping a PostgreSQL server left running by a previous Custos process"
            );
            // The previous process's watchdog may be stopping it at this very moment: if it
            // is gone when `pg_ctl stop` fails (no PID file left), it stopped, as asked.
            if let Err(err) = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]) {
                if pid_file.exists() {
                    return Err(err);
                }
            }
        } else {
            tracing::warn!("removing a stale postmaster.pid left by a previous Custos process");
            // A postmaster that was exiting as it was looked at removes the file itself.
            match fs::remove_file(&pid_file) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_at(&pid_file)(err));
                }
                _ => {}
            }
            for entry in fs::read_dir(&self.socket_dir)
                .map_err(io_at(&self.socket_dir))?
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(".s.PGSQL") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Starts the server and waits up to `seconds` for it to answer; one that does not is
    /// stopped.
    fn start(&self, seconds: u32) -> Result<(), ClusterError> {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log_file)
            .args(["start", "-w", "-t", &seconds.to_string(), "-s"])
            // Its own process group: a Ctrl-C meant for the service must not reach PostgreSQL
            // directly; the service stops it in order.
            .process_group(0);
        self.tools.run(command).inspect_err(|_| {
            tracing::error!(log = %self.log_file.display(), "PostgreSQL did not start");
            // Still starting (a time-out), it would run on with no watchdog.
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"]);
        })?;
        Ok(())
    }

    /// Processes of this cluster's server still running: PostgreSQL's processes work in
    /// their data directory, and a backend outlives its killed postmaster until it notices.
    fn processes(&self) -> usize {
        let Ok(pgdata) = self.pgdata.canonicalize() else {
            return 0;
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter(|entry| postgres(&entry.path()) && running(&entry.path()))
            .filter(|entry| fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == pgdata))
            .count()
    }
}

/// Watches a private cluster's server for the service, and starts it again when it dies.
#[derive(Debug, Clone)]
pub struct Supervisor {
    server: Server,
    stopping: Arc<Mutex<bool>>,
}

impl Supervisor {
    /// Whether the server's postmaster is running.
    pub fn alive(&self) -> bool {
        postmaster_alive(&self.server.pgdata)
    }

    /// Starts the server again after it died: PostgreSQL's crash recovery replays the WAL.
    /// Refused while processes of the dead server still run (they could still write); `false`
    /// when the cluster is being stopped. Blocking.
    pub fn restart(&self) -> Result<bool, ClusterError> {
        let stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        if *stopping {
            return Ok(false);
        }
        if self.alive() {
            return Ok(true);
        }
        let left = self.server.processes();
        if left > 0 {
            return Err(ClusterError::StillRunning(left));
        }
        self.server.recover_stale()?;
        self.server.start(60)?;
        Ok(true)
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`), for tests of outages;
    /// [`Supervisor::restart`] starts it again. Blocking.
    pub fn stop_server(&self) -> Result<(), ClusterError> {
        self.server
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
            .map(|_| ())
    }
}

/// PostgreSQL and its tools get a bare environment: this process's may hold secrets
/// (`CUSTOS_MASTER_KEY`, the passphrases), which the server's processes — another user's when
/// Custos runs as root, and the shell of every `archive_command` — must not inherit.
fn clean_environment(command: &mut Command) {
    command.env_clear().env("LC_ALL", "C");
    for kept in ["PATH", "TMPDIR", "TZ"] {
        if let Some(value) = std::env::var_os(kept) {
            command.env(kept, value);
        }
    }
}

fn own(user: &RunAs, path: &Path) -> Result<(), ClusterError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_at(path))
}

/// Every ancestor of `path` must let `user` through (execute permission).
fn check_reachable(user: &RunAs, path: &Path) -> Result<(), ClusterError> {
    for ancestor in path.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io_at(ancestor))?;
        let mode = meta.mode();
        let passes = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !passes {
            return Err(ClusterError::Unreachable {
                user: user.name.clone(),
                path: ancestor.to_owned(),
            });
        }
    }
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> Result<(), ClusterError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    file.write_all(contents.as_bytes()).map_err(io_at(path))
}

/// The superuser's password, generated on first start and kept (mode 0600) beside the
/// cluster. It never leaves the data directory.
/// Options for connecting as the superuser to a cluster another process runs on `dir` (the
/// service, for `custos verify`).
pub(crate) fn attach_options(dir: &Path) -> Result<PgConnectOptions, ClusterError> {
    let dir = dir.canonicalize().map_err(io_at(dir))?;
    let password = stored_password(&dir)?;
    Ok(PgConnectOptions::new()
        .socket(dir.join("run"))
        .port(PORT)
        .username(SUPERUSER)
        .password(password.expose_secret())
        .database("postgres"))
}

/// The superuser password kept beside the cluster under `dir` (`<data-dir>/postgres`), which
/// must exist.
pub(crate) fn stored_password(dir: &Path) -> Result<SecretString, ClusterError> {
    let path = dir.join("superuser.password");
    let mut password = String::new();
    File::open(&path)
        .and_then(|mut file| file.read_to_string(&mut password))
        .map_err(io_at(&path))?;
    Ok(SecretString::from(password.trim().to_owned()))
}

/// Whether a process holds the cluster directory `dir` (`<data-dir>/postgres`): a service or
/// command using it.
pub(crate) fn in_use(dir: &Path) -> bool {
    OpenOptions::new()
        .write(true)
        .open(dir.join("custos.lock"))
        .is_ok_and(|file| file.try_lock().is_err())
}

/// Whether the postmaster that `pgdata/postmaster.pid` names is still running.
pub(crate) fn postmaster_alive(pgdata: &Path) -> bool {
    fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|contents| {
            contents
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
        })
        .is_some_and(|pid| {
            let process = PathBuf::from(format!("/proc/{pid}"));
            // A process that reused the pid works elsewhere (where its directory can be read).
            let elsewhere = match (fs::read_link(process.join("cwd")), pgdata.canonicalize()) {
                (Ok(cwd), Ok(pgdata)) => cwd != pgdata,
                _ => false,
            };
            postgres(&process) && running(&process) && !elsewhere
        })
}

/// Whether the process at `/proc/<pid>` is a PostgreSQL server process.
fn postgres(process: &Path) -> bool {
    fs::read_to_string(process.join("comm")).is_ok_and(|comm| comm.trim().starts_with("postgres"))
}

/// Whether the process at `/proc/<pid>` runs: a killed process stays a zombie until its
/// parent collects it.
fn running(process: &Path) -> bool {
    fs::read_to_string(process.join("stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn superuser_password(dir: &Path) -> Result<SecretString, ClusterError> {
    let path = dir.join("superuser.password");
    let mut existing = String::new();
    if let Ok(mut file) = File::open(&path) {
        file.read_to_string(&mut existing).map_err(io_at(&path))?;
        if !existing.trim().is_empty() {
            return Ok(SecretString::from(existing.trim().to_owned()));
        }
    }
    let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 40);
    write_private(&path, &password)?;
    Ok(SecretString::from(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_binaries_error_says_what_to_install() {
        let message = ClusterError::BinariesNotFound.to_string();
        assert!(message.contains("apt-get install postgresql"));
        assert!(message.contains("DATABASE_URL"));
        assert!(message.contains("CUSTOS_PG_BIN_DIR"));
    }

    fn fake_server(dir: &Path, programs: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for program in programs {
            fs::write(dir.join(program), "").unwrap();
        }
    }

    #[test]
    fn the_newest_complete_server_is_chosen() {
        let root = tempfile::tempdir().unwrap();
        fake_server(
            &root.path().join("9/bin"),
            &["initdb", "pg_ctl", "postgres"],
        );
        fake_server(
            &root.path().join("15/bin"),
            &["initdb", "pg_ctl", "postgres"],
        );
        fake_server(&root.path().join("16/bin"), &["psql"]);
        fake_server(
            &root.path().join("notes/bin"),
            &["initdb", "pg_ctl", "postgres"],
        );

        let dirs = versioned_bin_dirs(root.path());
        assert_eq!(
            dirs[0],
            root.path().join("16/bin"),
            "numeric order, newest first"
        );
        assert_eq!(
            first_with_server(dirs),
            Some(root.path().join("15/bin")),
            "a client-only 16 is skipped"
        );
    }

    #[test]
    fn an_explicit_directory_wins_and_nothing_means_none() {
        let explicit = tempfile::tempdir().unwrap();
        let system = tempfile::tempdir().unwrap();
        fake_server(explicit.path(), &["initdb", "pg_ctl", "postgres"]);
        fake_server(
            &system.path().join("15/bin"),
            &["initdb", "pg_ctl", "postgres"],
        );
        let candidates =
            std::iter::once(explicit.path().to_owned()).chain(versioned_bin_dirs(system.path()));
        assert_eq!(
            first_with_server(candidates),
            Some(explicit.path().to_owned())
        );
        assert_eq!(
            first_with_server(versioned_bin_dirs(&system.path().join("missing"))),
            None
        );
    }

    #[test]
    fn the_superuser_password_is_created_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = superuser_password(dir.path()).unwrap();
        let second = superuser_password(dir.path()).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert_eq!(first.expose_secret().len(), 40);
        let mode = fs::metadata(dir.path().join("superuser.password"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn unreachable_ancestors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let closed = dir.path().join("closed");
        let inner = closed.join("inner");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = RunAs {
            name: "stranger".into(),
            uid: 65_000,
            gid: 65_000,
        };
        match check_reachable(&stranger, &inner.join("data")) {
            Err(ClusterError::Unreachable { path, .. }) => {
                assert_eq!(path, inner.parent().unwrap().to_owned())
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o711)).unwrap();
        assert!(check_reachable(&stranger, &inner.join("data")).is_ok());
    }
}
