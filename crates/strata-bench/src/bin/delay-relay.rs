//! A TCP relay that adds a fixed one-way delay in each direction, to put a
//! round-trip time on a connection (this kernel has no `tc netem`).
//!
//!   delay-relay LISTEN_ADDR TARGET_ADDR ONE_WAY_DELAY_US
//!
//! Each direction of each connection has a reader that stamps every chunk with the
//! time it may leave and a writer that sends chunks in order once that time comes, so
//! the delay adds latency without capping throughput.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = crossbeam_channel::unbounded::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: delay-relay LISTEN_ADDR TARGET_ADDR ONE_WAY_DELAY_US");
        std::process::exit(2);
    }
    let delay = Duration::from_micros(args[3].parse().expect("delay in microseconds"));
    let listener = TcpListener::bind(&args[1]).expect("bind");
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let target = args[2].clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = std::thread::spawn(move || pump(client, server, delay));
            pump(s2, c2, delay);
            let _ = up.join();
        });
    }
}
