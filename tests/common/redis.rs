//! A real `redis-server` for cluster-mode tests: on an ephemeral TCP port
//! or a Unix socket in a temporary directory, killed and restarted at will.
//! `.ci/run` installs the Debian package.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::WAIT;

pub struct Redis {
    child: Option<Child>,
    args: Vec<String>,
    /// What the gateway's `rate_limit.redis.url` names.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// On a TCP port the kernel picked a moment before (redis-server cannot
    /// report a port it chose itself).
    pub fn tcp() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start(
            vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
            ],
            format!("redis://127.0.0.1:{port}/0"),
        )
    }

    /// On a Unix socket: restarts land on the same address with no race.
    pub fn unix() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let url = format!("unix://{}", socket.display());
        let args = vec![
            "--port".into(),
            "0".into(),
            "--unixsocket".into(),
            socket.display().to_string(),
        ];
        Self::start_in(dir, args, url)
    }

    fn start(args: Vec<String>, url: String) -> Redis {
        Self::start_in(tempfile::tempdir().unwrap(), args, url)
    }

    fn start_in(dir: tempfile::TempDir, mut args: Vec<String>, url: String) -> Redis {
        args.extend(
            ["--save", "", "--appendonly", "no", "--dir"]
                .map(String::from)
                .into_iter()
                .chain([dir.path().display().to_string()]),
        );
        let mut r = Redis {
            child: None,
            args,
            url,
            _dir: dir,
        };
        r.restart();
        r
    }

    /// Starts the server (again); returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server cannot start ({e}); install it: apt-get install redis-server")
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line
                    .to_ascii_lowercase()
                    .contains("ready to accept connections")
                {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT)
            .expect("redis-server did not become ready");
        self.child = Some(child);
    }

    /// Kills the server at once (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
