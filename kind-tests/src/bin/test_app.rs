//! wimsey-test-app: the workload image of the e2e tests. A static binary with no dependencies beyond
//! `nix`, so its image is one file.
//!
//! - `wimsey-test-app [serve] [--port N]`: a tiny HTTP/1.0 server. `GET /readyz` and `GET /healthz`
//!   answer `200 ok`, `GET /` answers with the pod's hostname. Exits 0 on SIGTERM/SIGINT.
//! - `wimsey-test-app cat FILE...`: prints the files (the image has no shell; tests exec this).
//! - `wimsey-test-app ls DIR`: lists a directory, one name per line.
//! - `wimsey-test-app get http://HOST:PORT/PATH`: an HTTP/1.0 GET; prints the body, fails on non-2xx.
//! - `wimsey-test-app connect HOST:PORT`: a TCP connect (5 s timeout); exit 0 when it succeeds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") | Some("--port") => serve(&args),
        Some("cat") => cat(&args[1..]),
        Some("ls") => ls(&args[1..]),
        Some("get") => get(args.get(1).map(String::as_str).unwrap_or("")),
        Some("connect") => connect(args.get(1).map(String::as_str).unwrap_or("")),
        Some("version") => {
            println!("wimsey-test-app {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!(
                "wimsey-test-app: unknown command {other:?} (serve, cat, ls, get, connect, version)"
            );
            ExitCode::from(2)
        }
    }
}

fn cat(files: &[String]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut code = ExitCode::SUCCESS;
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => {
                if out.write_all(&bytes).is_err() {
                    return ExitCode::FAILURE;
                }
            }
            Err(err) => {
                eprintln!("cat: {f}: {err}");
                code = ExitCode::FAILURE;
            }
        }
    }
    let _ = out.flush();
    code
}

fn ls(dirs: &[String]) -> ExitCode {
    let dir = dirs.first().map(String::as_str).unwrap_or(".");
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ls: {dir}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn dial(addr: &str) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn connect(addr: &str) -> ExitCode {
    match dial(addr) {
        Ok(_) => {
            println!("connected to {addr}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("connect {addr}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn get(url: &str) -> ExitCode {
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("get: want http://HOST:PORT/PATH, got {url:?}");
        return ExitCode::from(2);
    };
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut stream = match dial(&hostport) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("get {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut response = Vec::new();
    if let Err(err) = write!(stream, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")
        .and_then(|()| stream.read_to_end(&mut response))
    {
        eprintln!("get {url}: {err}");
        return ExitCode::FAILURE;
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    print!("{body}");
    let ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("get {url}: {}", head.lines().next().unwrap_or(""));
        ExitCode::FAILURE
    }
}

fn serve(args: &[String]) -> ExitCode {
    let mut port: u16 = 8080;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--port" {
            match it.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => {
                    eprintln!("wimsey-test-app: --port needs a number");
                    return ExitCode::from(2);
                }
            }
        }
    }
    // Block the shutdown signals before any thread starts (threads inherit the mask), then wait for them
    // on a dedicated thread: as PID 1 of a container, default-action signals would be dropped.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(err) = set.thread_block() {
        eprintln!("wimsey-test-app: cannot block signals: {err}");
        return ExitCode::FAILURE;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("wimsey-test-app: got {sig}, exiting");
        }
        std::process::exit(0);
    });
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("wimsey-test-app: bind :{port}: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("wimsey-test-app: listening on :{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream));
    }
    ExitCode::SUCCESS
}

fn handle(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain the headers (bounded).
    let mut line = String::new();
    let mut budget = 64;
    while budget > 0 {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => budget -= 1,
        }
    }
    let _ = reader.take(0).read(&mut []);
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/readyz" | "/healthz" => ("200 OK", "ok\n".to_string()),
        "/" => {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            ("200 OK", format!("wimsey-test-app {}\n", host.trim()))
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
