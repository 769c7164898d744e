//! Real Django for the differential harness: the project in `tests/django/`
//! served by gunicorn (sync workers, as in production) on a free loopback
//! port, from a Python venv with the pinned `tests/django/requirements.txt`.
//!
//! The venv is built once per content of the requirements and Python
//! version, under the cargo target dir (`target/tmp/django-venv-<hash>`), and
//! reused by every later run; it is built in a temporary directory and
//! renamed into place, so two test processes never share a half-built one.
//! Without `python3` (or its `venv` module, or pip) the test fails and says
//! what to install. `QP_PYTHON` names another interpreter.
//!
//! Every image a view "saves" is one JSON line in a file of the test's own
//! temporary directory; [`SavedImages`] counts them per user and per case.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::raw_http;

/// How long gunicorn may take to answer its first request.
const START_WITHIN: Duration = Duration::from_secs(60);

/// The Django project's directory.
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/django")
}

/// The venv's `bin/` directory, built on first use (once per process, and
/// reused across processes).
pub fn venv_bin() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| build_venv(REQUIREMENTS).unwrap_or_else(|e| panic!("{e}")))
}

/// The pinned stack of `tests/django/requirements.txt`.
pub const REQUIREMENTS: &str = "requirements.txt";

/// The stack the chat app itself pins (its `requirements.txt`: Django
/// 5.1.2, gunicorn 21.2.0), for the preset's own backend.
pub const APP_REQUIREMENTS: &str = "requirements-mobixai.txt";

/// [`venv_bin`] for another requirements file of `tests/django/`, built
/// once per process the same way.
pub fn venv_bin_for(requirements: &'static str) -> PathBuf {
    if requirements == REQUIREMENTS {
        return venv_bin().to_owned();
    }
    static VENVS: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
    let mut venvs = VENVS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bin) = venvs.get(requirements) {
        return bin.clone();
    }
    let bin = build_venv(requirements).unwrap_or_else(|e| panic!("{e}"));
    venvs.insert(requirements, bin.clone());
    bin
}

fn python() -> String {
    std::env::var("QP_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

const INSTALL_HINT: &str = "the Django harness needs Python 3.10+ with venv and pip: on \
    Debian/Ubuntu `apt-get install python3 python3-venv python3-pip` (.ci/run does this), or set \
    QP_PYTHON to an interpreter that has them";

/// Written into a venv once pip has installed everything.
const COMPLETE: &str = "harness-complete";

fn build_venv(requirements: &str) -> Result<PathBuf, String> {
    let requirements = project_dir().join(requirements);
    let pins = std::fs::read(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let python = python();
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `{python}` ({e}); {INSTALL_HINT}"))?;
    if !version.status.success() {
        return Err(format!("`{python} --version` failed; {INSTALL_HINT}"));
    }
    let mut hash = Sha256::new();
    hash.update(&pins);
    hash.update(&version.stdout);
    hash.update(&version.stderr);
    let hash: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join(format!("django-venv-{hash}"));
    let bin = venv.join("bin");
    if venv.join(COMPLETE).exists() {
        return Ok(bin);
    }
    // From here on another test process may finish the same venv first;
    // a complete one is never removed, and the rename below then fails and
    // uses it.
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    // A venv directory without the mark is not one of ours (or predates
    // it): build a fresh one in its place.
    if venv.exists() && !venv.join(COMPLETE).exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("remove the incomplete venv {}: {e}", venv.display()))?;
    }
    let building = tempfile::Builder::new()
        .prefix("django-venv-building-")
        .tempdir_in(&root)
        .map_err(|e| format!("temporary venv directory in {}: {e}", root.display()))?;
    let run = |command: &mut Command, what: &str, hint: &str| -> Result<(), String> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what}: cannot run ({e}); {INSTALL_HINT}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{what} failed ({}); {hint}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    run(
        Command::new(&python)
            .args(["-m", "venv"])
            .arg(building.path()),
        &format!("`{python} -m venv`"),
        INSTALL_HINT,
    )?;
    run(
        Command::new(building.path().join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
        &format!("pip install -r {}", requirements.display()),
        "pip must reach PyPI (or a mirror set with PIP_INDEX_URL) to install the pinned \
         Django, djangorestframework and gunicorn",
    )?;
    // The scripts' shebangs name the temporary path, so the venv is only
    // ever used as `bin/python -m …` (Python finds its venv from where the
    // interpreter is, which moves with the directory).
    std::fs::write(building.path().join(COMPLETE), pins)
        .map_err(|e| format!("mark the venv complete: {e}"))?;
    let built = building.keep();
    match std::fs::rename(&built, &venv) {
        Ok(()) => {}
        // Another process finished first: use its venv.
        Err(_) if venv.join(COMPLETE).exists() => {
            let _ = std::fs::remove_dir_all(&built);
            return Ok(bin);
        }
        Err(e) => return Err(format!("rename venv into {}: {e}", venv.display())),
    }
    Ok(bin)
}

/// A running gunicorn serving the harness project; killed on drop.
pub struct Django {
    child: Option<Child>,
    /// Where gunicorn listens.
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    saved_file: PathBuf,
    _dir: TempDir,
}

impl Django {
    /// Starts gunicorn (2 sync workers) on a free port and waits until
    /// Django answers; panics (the test fails) if it does not in time.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Self::start`] with extra environment variables for gunicorn
    /// (e.g. `HARNESS_GZIP=1`, see `tests/django/harness/settings.py`).
    /// `QP_DJANGO_STACK=app` runs it on [`APP_REQUIREMENTS`] instead (the
    /// differential harness against the chat app's own pins).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        match std::env::var("QP_DJANGO_STACK").as_deref() {
            Ok("app") => Self::start_on(APP_REQUIREMENTS, env),
            _ => Self::start_on(REQUIREMENTS, env),
        }
    }

    /// [`Self::start_with`] on the stack pinned in `requirements` (a file
    /// of `tests/django/`, e.g. [`APP_REQUIREMENTS`]).
    pub fn start_on(requirements: &'static str, env: &[(&str, &str)]) -> Self {
        let bin = venv_bin_for(requirements);
        let dir = tempfile::tempdir().expect("temporary directory");
        let saved_file = dir.path().join("saved.jsonl");
        std::fs::write(&saved_file, b"").expect("create the saved-images file");
        let mut command = Command::new(bin.join("python"));
        command
            .args(["-m", "gunicorn", "--workers", "2", "--worker-class", "sync"])
            .args(["--bind", "127.0.0.1:0", "--graceful-timeout", "1"])
            .args(["--log-level", "info", "harness.wsgi:application"])
            .current_dir(project_dir())
            .env("HARNESS_SAVED_FILE", &saved_file)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("DJANGO_SETTINGS_MODULE", "harness.settings")
            .env_remove("SCRIPT_NAME")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the test process dies, gunicorn's master goes with it.
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gunicorn from {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut django = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            saved_file,
            _dir: dir,
        };
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if django.addr.port() == 0 {
                let line = django
                    .logs()
                    .into_iter()
                    .find_map(|l| l.split("Listening at: http://").nth(1).map(str::to_owned));
                if let Some(rest) = line {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    django.addr = addr
                        .parse()
                        .unwrap_or_else(|_| panic!("gunicorn listens at {addr:?}?"));
                }
            } else {
                let request = b"GET /healthz/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
                let response = raw_http::send(django.addr, request, false, Duration::from_secs(5));
                if response.status == 200 {
                    return django;
                }
            }
            if let Some(status) = django
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "gunicorn exited with {status} before serving:\n{}",
                    django.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn did not answer GET /healthz/ within {START_WITHIN:?}:\n{}",
                django.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// gunicorn's and Django's log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// A reader of the images the views saved.
    pub fn saved(&self) -> SavedImages {
        SavedImages {
            path: self.saved_file.clone(),
            offset: 0,
            by_user: HashMap::new(),
            by_case: HashMap::new(),
            total: 0,
        }
    }
}

impl Drop for Django {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGQUIT: gunicorn's quick shutdown (workers exit at once).
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Counts the images the views saved (the lines of the saved file), read
/// incrementally.
pub struct SavedImages {
    path: PathBuf,
    offset: u64,
    by_user: HashMap<String, usize>,
    by_case: HashMap<(String, String), usize>,
    total: usize,
}

impl SavedImages {
    fn refresh(&mut self) {
        let mut file = std::fs::File::open(&self.path).expect("open the saved-images file");
        file.seek(SeekFrom::Start(self.offset))
            .expect("seek the saved-images file");
        let mut text = String::new();
        file.read_to_string(&mut text)
            .expect("read the saved-images file");
        // Only whole lines; a line being written is read next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..whole].lines() {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("saved line {line:?}: {e}"));
            let user = value["user"].as_str().unwrap_or("").to_owned();
            let case = value["case"].as_str().unwrap_or("").to_owned();
            *self.by_user.entry(user.clone()).or_default() += 1;
            *self.by_case.entry((user, case)).or_default() += 1;
            self.total += 1;
        }
        self.offset += whole as u64;
    }

    /// Images saved for `user` (the id Django saw) so far.
    pub fn by_user(&mut self, user: &str) -> usize {
        self.refresh();
        self.by_user.get(user).copied().unwrap_or(0)
    }

    /// Images saved for `user` by requests tagged `X-Harness-Case: case`.
    pub fn for_case(&mut self, user: &str, case: usize) -> usize {
        self.refresh();
        let key = (user.to_owned(), case.to_string());
        self.by_case.get(&key).copied().unwrap_or(0)
    }

    /// Images saved for anyone so far.
    pub fn total(&mut self) -> usize {
        self.refresh();
        self.total
    }
}
