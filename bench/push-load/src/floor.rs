//! `floor`: what ten thousand small messages over loopback TCP cost this machine's kernel with
//! no server at all — the floor under the fan-out and long-poll wake-up figures. N connected
//! pairs of plain sockets; per round, writer threads send 120 bytes on each (one thread, then
//! two splitting the list) while a reader thread reads each in the same order with blocking
//! reads. The time until the reader has the last message is the least any server on this
//! machine could take to tell N waiting clients something, with the clients' reads in the
//! same run (as the load generator's are).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

const MESSAGE: [u8; 120] = [b'x'; 120];

pub fn run(connections: usize, rounds: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..connections {
        let reader = TcpStream::connect(addr).context("connect")?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        reader.set_nodelay(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    for threads in [1, 2] {
        let mut lasts = Vec::new();
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            let reading = std::thread::spawn(move || -> anyhow::Result<_> {
                let mut buf = [0u8; MESSAGE.len()];
                for r in &mut readers {
                    r.read_exact(&mut buf)?;
                }
                Ok((readers, started.elapsed()))
            });
            let second: Vec<TcpStream> = writers.drain(writers.len() / threads..).collect();
            let helper = std::thread::spawn(move || -> anyhow::Result<Vec<TcpStream>> {
                let mut second = second;
                for w in &mut second {
                    w.write_all(&MESSAGE)?;
                }
                Ok(second)
            });
            for w in &mut writers {
                w.write_all(&MESSAGE)?;
            }
            writers.extend(
                helper
                    .join()
                    .map_err(|_| anyhow::anyhow!("writer panicked"))??,
            );
            let (back, last) = reading
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))??;
            readers = back;
            lasts.push(last.as_secs_f64() * 1000.0);
        }
        lasts.sort_by(f64::total_cmp);
        println!(
            "run=floor connections={connections} writer_threads={threads} rounds={rounds} \
             last_ms_min={:.1} last_ms_median={:.1} last_ms_max={:.1}",
            lasts[0],
            lasts[lasts.len() / 2],
            lasts[lasts.len() - 1],
        );
    }
    Ok(())
}
