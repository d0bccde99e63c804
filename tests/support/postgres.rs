//! A throw-away PostgreSQL cluster for the tests that need the real
//! database (tests/history.rs, tests/scale_out.rs): `initdb` in a temp
//! folder, `pg_ctl start` on a free loopback port (as the `postgres` user
//! when the tests run as root, which initdb refuses), trust authentication
//! for the role `emonav`; stopped and removed on drop. scripts/test.sh
//! installs the Debian package `postgresql` when initdb is missing.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A throw-away PostgreSQL cluster on a free loopback port, stopped on drop.
pub(crate) struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn bin_dir() -> PathBuf {
        if let Ok(out) = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
        {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !p.is_empty() {
                // Through a symlink to the version's folder, where psql is too.
                let real = std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(&p));
                return real.parent().unwrap().to_path_buf();
            }
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (scripts/test.sh installs it)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
            .expect("no initdb under /usr/lib/postgresql/*/bin")
    }

    fn run(&self, prog: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(prog);
        let mut cmd = if self.as_postgres {
            // initdb and postgres refuse to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).output().expect(prog)
    }

    pub(crate) fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("emonav-pg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if as_postgres {
            assert!(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            bin: Self::bin_dir(),
            dir,
            port,
            as_postgres,
        };
        let data = pg.dir.join("data");
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "emonav",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.ctl_start();
        pg
    }

    pub(crate) fn ctl_start(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn stop(&self) {
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Run `sql` with psql; its rows, one a line, columns separated by `|`.
    pub(crate) fn query(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "emonav",
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Its TCP port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://emonav@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
