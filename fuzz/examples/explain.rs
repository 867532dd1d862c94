//! Shows what `recovery_scanner` inputs do: the damage operations, and what recovery made of
//! the damaged store under each policy. Run from `fuzz/`:
//!
//!     cargo run --example explain -- artifacts/recovery_scanner/crash-...
//!
//! With `--summary`, prints only one line per input (for surveying a corpus directory).

use std::fs;
use std::path::PathBuf;

use spool_engine::RecoveryPolicy;
use spool_fuzz::{apply_ops, open_and_read, parse_ops, Pristine};

fn main() {
    let mut summary = false;
    let mut paths = Vec::new();
    for a in std::env::args().skip(1) {
        if a == "--summary" {
            summary = true;
            continue;
        }
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut v: Vec<PathBuf> = fs::read_dir(&p)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .collect();
            v.sort();
            paths.extend(v);
        } else {
            paths.push(p);
        }
    }
    let p = Pristine::get();
    for path in paths {
        let data = fs::read(&path).expect("read input");
        let ops = parse_ops(&data);
        let mut files = p.files.clone();
        apply_ops(&mut files, &ops);
        let describe = |policy| match open_and_read(&files, policy).0 {
            Ok(c) => format!(
                "opened: {} queue msgs, {} topic msgs, {} damaged range(s)",
                c.queue_msgs.len(),
                c.topic_msgs.len(),
                c.damaged.len()
            ),
            Err(e) => format!("error: {e}"),
        };
        let refuse = describe(RecoveryPolicy::Refuse);
        let skip = describe(RecoveryPolicy::Skip);
        if summary {
            println!("{}\tRefuse {refuse}\tSkip {skip}", path.display());
        } else {
            println!("{}:", path.display());
            for op in &ops {
                println!("  {op:?}");
            }
            println!("  Refuse: {refuse}\n  Skip:   {skip}");
        }
    }
}
