//! `loadgen swarm` against a real agent: gossip members in this process join the agent's
//! pool, one is killed, and the agent's own member list (the servers' point of view)
//! shows it failed.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_net::rpc::message::{Op, Response};
use loadgen::swarm::{run, SwarmConfig};
use support::{free_port, free_udp_port, req, CAIRN};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_swarm_joins_a_dev_agent_and_the_agent_sees_a_killed_member_fail() {
    let (port, serf) = (free_port("127.0.0.1"), free_udp_port("127.0.0.1"));
    let _agent = Kill(
        Command::new(CAIRN)
            .args(["agent", "--dev", "--server-port", &port.to_string()])
            .args([
                "--serf-lan-port",
                &serf.to_string(),
                "--http-port",
                "-1",
                "--dns-port",
                "-1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rpc = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = cairn::client::RpcClient::connect(&rpc, Duration::from_secs(1))
            .ok()
            .and_then(|mut c| c.call(&req(Op::Members)).ok());
        if matches!(up, Some(Response::Members(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cfg = SwarmConfig::new(vec![format!("127.0.0.1:{serf}").parse().unwrap()], 16);
    cfg.profile = "local".into();
    cfg.duration = Duration::from_secs(12);
    cfg.kill_every = Some(Duration::from_secs(2));
    cfg.down_for = Duration::from_secs(8);
    cfg.base_port = 20_000 + (std::process::id() % 500) as u16 * 20;
    cfg.progress = false;
    cfg.server_rpc = Some(rpc);
    let summary = run(&cfg).unwrap();
    print!("{}", summary.table());
    assert!(summary.converged_ms.is_some(), "the swarm never converged");
    assert!(!summary.kills.is_empty(), "nothing was killed");
    assert!(
        summary
            .kills
            .iter()
            .any(|k| k.server_detection_ms.is_some()),
        "the agent never listed a killed member failed: {:?}",
        summary.kills
    );
}
