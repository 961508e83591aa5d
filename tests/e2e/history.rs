//! Per-user history and resume against the real runtime: `seq` on every
//! envelope and `subscribed`, resume of exactly the missed matching
//! envelopes, a resumed socket joining a publish in flight, trimmed,
//! expired and foreign histories (`complete: false`), history off, bad
//! resume frames, and history across a restart with persisted state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::hostile::strict_token;

use crate::support::{
    publish, publish_as, send, sockets_of, unique_user, Client, Restartable, WAIT,
};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        every_publish_gets_the_next_seq,
        resume_replays_exactly_the_missed_matching_envelopes,
        resumed_socket_joins_a_publish_in_flight,
        trimmed_history_is_incomplete,
        expired_history_is_incomplete,
        another_epoch_is_incomplete,
        history_off_has_no_seq_and_refuses_resume,
        bad_resume_frames_get_error_frames,
        history_survives_a_restart,
        expired_envelopes_are_deleted_from_storage,
    ]
}

/// Subscribes and returns the confirmation's `(seq, epoch)`.
async fn subscribe_at(socket: &mut Client, filters: Value) -> (u64, String) {
    let frame = socket.subscribe(filters).await;
    let seq = frame["seq"].as_u64().expect("seq");
    let epoch = frame["epoch"].as_str().expect("epoch").to_owned();
    (seq, epoch)
}

async fn resume(socket: &mut Client, since: Value, epoch: Value) {
    socket
        .send_json(json!({"type": "resume", "since": since, "epoch": epoch}))
        .await;
}

/// Frames until `resumed`: the replayed envelopes, and the `resumed` frame.
async fn replay(socket: &mut Client) -> (Vec<Value>, Value) {
    let mut replayed = Vec::new();
    loop {
        let frame = socket.recv_json().await;
        if frame["type"] == "resumed" {
            return (replayed, frame);
        }
        assert!(frame["envelopeId"].is_string(), "unexpected frame {frame}");
        replayed.push(frame);
    }
}

async fn every_publish_gets_the_next_seq(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("seq");
    let mut socket = Client::for_user(server, &user).await;
    let (start, _) = subscribe_at(&mut socket, json!([{}])).await;
    assert_eq!(start, 0, "a new user's history starts at 0");
    for n in 1..=3u64 {
        let (outcome, envelope) = tokio::join!(
            publish(server, &user, "t", json!(n)),
            socket.ack_next(json!(n))
        );
        assert_eq!(outcome["clientCount"], 1);
        assert_eq!(envelope["seq"], n);
        assert!(envelope.get("recovered").is_none());
    }
    // Also with nobody listening: that is the point of history.
    let nobody = unique_user("seq-nobody");
    publish(server, &nobody, "t", json!(1)).await;
    publish(server, &nobody, "t", json!(2)).await;
    let mut late = Client::for_user(server, &nobody).await;
    let (seq, _) = subscribe_at(&mut late, json!([{"type": "never"}])).await;
    assert_eq!(seq, 2);
    // Each user of a batch counts on its own history.
    let token = server.token("backend");
    let r = crate::support::send(
        server
            .request(Method::POST, "/publish/batch")
            .bearer_auth(&token)
            .json(&json!({"userIds": [user, nobody], "payload": "b"})),
    );
    let (r, envelope) = tokio::join!(r, socket.ack_next(json!("b")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(envelope["seq"], 4);
    let (seq, _) = subscribe_at(&mut late, json!([{"type": "x"}])).await;
    assert_eq!(seq, 3);
}

async fn resume_replays_exactly_the_missed_matching_envelopes(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("resume");
    let mut first = Client::for_user(server, &user).await;
    subscribe_at(&mut first, json!([{"type": "a"}])).await;
    let (_, seen) = tokio::join!(
        publish(server, &user, "a", json!({"n": 1})),
        first.ack_next(json!(1))
    );
    let since = seen["seq"].as_u64().expect("seq");
    let epoch = first.subscribe(json!([{"type": "a"}])).await["epoch"].clone();
    first.close().await;
    // Missed while away: two matching, one not.
    for (kind, n) in [("a", 2), ("b", 3), ("a", 4)] {
        let outcome = publish(server, &user, kind, json!({"n": n})).await;
        assert_eq!(outcome["clientCount"], 0);
    }
    let mut second = Client::for_user(server, &user).await;
    subscribe_at(&mut second, json!([{"type": "a"}])).await;
    resume(&mut second, json!(since), epoch.clone()).await;
    let (replayed, resumed) = replay(&mut second).await;
    let payloads: Vec<&Value> = replayed.iter().map(|e| &e["payload"]["n"]).collect();
    assert_eq!(payloads, [2, 4]);
    let seqs: Vec<u64> = replayed.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [since + 1, since + 3]);
    for envelope in &replayed {
        assert_eq!(envelope["recovered"], true);
        assert_eq!(envelope["type"], "a");
    }
    assert_eq!(
        resumed,
        json!({"type": "resumed", "since": since, "seq": since + 3, "replayed": 2,
               "complete": true, "epoch": epoch})
    );
    // Acks of recovered envelopes are accepted (no error frame).
    second.ack(&replayed[0], json!("late")).await;
    second.ping().await;
    // After the resume, live again, in order.
    let (_, live) = tokio::join!(
        publish(server, &user, "a", json!({"n": 5})),
        second.ack_next(json!(5))
    );
    assert_eq!(live["seq"], since + 4);
    assert!(live.get("recovered").is_none());
    // Resuming from where it is replays nothing and is complete.
    resume(&mut second, json!(since + 4), epoch).await;
    let (replayed, resumed) = replay(&mut second).await;
    assert!(replayed.is_empty());
    assert_eq!(resumed["complete"], true);
    assert_eq!(resumed["replayed"], 0);
}

async fn resumed_socket_joins_a_publish_in_flight(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("join");
    let mut leaving = Client::for_user(server, &user).await;
    let (since, epoch) = subscribe_at(&mut leaving, json!([{}])).await;
    let mut staying = Client::for_user(server, &user).await;
    subscribe_at(&mut staying, json!([{}])).await;
    let publishing = publish(server, &user, "t", json!("in flight"));
    let reconnecting = async {
        leaving.recv_envelope().await;
        let envelope = staying.recv_envelope().await;
        // The first socket goes before acking; its client comes back.
        leaving.close().await;
        let mut back = Client::for_user(server, &user).await;
        subscribe_at(&mut back, json!([{}])).await;
        resume(&mut back, json!(since), json!(epoch)).await;
        let (replayed, resumed) = replay(&mut back).await;
        assert_eq!(replayed.len(), 1, "{replayed:?}");
        assert_eq!(replayed[0]["envelopeId"], envelope["envelopeId"]);
        assert_eq!(resumed["complete"], true);
        back.ack(&replayed[0], json!("from the resumed socket"))
            .await;
        back.ping().await;
        staying.ack(&envelope, json!("from the other socket")).await;
    };
    let (outcome, ()) = tokio::join!(publishing, reconnecting);
    // Sent to three sockets (the one that left, the other, the resumed
    // one); two acked.
    assert_eq!(
        outcome,
        json!({"clientCount": 3, "results": ["from the resumed socket", "from the other socket"]})
    );
}

async fn trimmed_history_is_incomplete(ctx: Arc<Ctx>) {
    // The strict server keeps 3 envelopes.
    let user = unique_user("trim");
    let token = strict_token(&ctx, &user, json!({}));
    let backend = strict_token(&ctx, "backend", json!({}));
    let mut socket = Client::connect(&ctx.strict, &token).await;
    let (since, epoch) = subscribe_at(&mut socket, json!([{"type": "never"}])).await;
    for n in 1..=5 {
        let r = publish_as(&ctx.strict, &backend, json!({"userId": user, "payload": n})).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut back = Client::connect(&ctx.strict, &token).await;
    subscribe_at(&mut back, json!([{}])).await;
    resume(&mut back, json!(since), json!(epoch)).await;
    let (replayed, resumed) = replay(&mut back).await;
    let payloads: Vec<&Value> = replayed.iter().map(|e| &e["payload"]).collect();
    assert_eq!(payloads, [3, 4, 5], "the last three are kept");
    assert_eq!(resumed["complete"], false);
    assert_eq!(resumed["replayed"], 3);
    assert_eq!(resumed["seq"], since + 5);
}

async fn expired_history_is_incomplete(ctx: Arc<Ctx>) {
    // The strict server keeps envelopes 2 s.
    let user = unique_user("expire");
    let token = strict_token(&ctx, &user, json!({}));
    let backend = strict_token(&ctx, "backend", json!({}));
    let mut socket = Client::connect(&ctx.strict, &token).await;
    let (since, epoch) = subscribe_at(&mut socket, json!([{"type": "never"}])).await;
    publish_as(&ctx.strict, &backend, json!({"userId": user, "payload": 1})).await;
    // Complete while it is kept; incomplete, with nothing replayed, once
    // it expired.
    let deadline = Instant::now() + WAIT;
    let mut was_complete = false;
    loop {
        resume(&mut socket, json!(since), json!(epoch)).await;
        let (replayed, resumed) = replay(&mut socket).await;
        if resumed["complete"] == true {
            assert_eq!(replayed.len(), 0, "filters match nothing");
            was_complete = true;
        } else {
            assert!(replayed.is_empty());
            assert_eq!(resumed["seq"], since + 1);
            break;
        }
        assert!(Instant::now() < deadline, "history never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(was_complete, "the envelope expired before the first resume");
    // The seq is not reused after the history expired.
    let mut other = Client::connect(&ctx.strict, &token).await;
    subscribe_at(&mut other, json!([{}])).await;
    let (_, envelope) = tokio::join!(
        publish_as(&ctx.strict, &backend, json!({"userId": user, "payload": 2})),
        other.ack_next(json!(null))
    );
    assert_eq!(envelope["seq"], since + 2);
}

async fn another_epoch_is_incomplete(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("epoch");
    publish(server, &user, "t", json!(1)).await;
    let mut socket = Client::for_user(server, &user).await;
    let (seq, epoch) = subscribe_at(&mut socket, json!([{}])).await;
    resume(&mut socket, json!(0), json!("another-history")).await;
    let (replayed, resumed) = replay(&mut socket).await;
    assert!(
        replayed.is_empty(),
        "nothing of another history is replayed"
    );
    assert_eq!(
        resumed,
        json!({"type": "resumed", "since": 0, "seq": seq, "replayed": 0,
               "complete": false, "epoch": epoch})
    );
    // A position the history never reached.
    resume(&mut socket, json!(seq + 10), json!(epoch)).await;
    let (replayed, resumed) = replay(&mut socket).await;
    assert!(replayed.is_empty());
    assert_eq!(resumed["complete"], false);
}

async fn history_off_has_no_seq_and_refuses_resume(ctx: Arc<Ctx>) {
    let server = &ctx.nohistory;
    let user = unique_user("nohistory");
    let mut socket = Client::for_user(server, &user).await;
    let frame = socket.subscribe(json!([{}])).await;
    assert_eq!(frame, json!({"type": "subscribed", "added": 1, "total": 1}));
    let (_, envelope) = tokio::join!(
        publish(server, &user, "t", json!(1)),
        socket.ack_next(json!(1))
    );
    assert!(envelope.get("seq").is_none(), "{envelope}");
    resume(&mut socket, json!(0), json!("e")).await;
    socket.expect_error("history_disabled").await;
    socket.ping().await;
}

/// The stored history as the operator's sockets route reports it.
async fn stored_history(ctx: &Ctx, user: &str) -> Value {
    let admin = strict_token(ctx, "ops", json!({"scope": "ops-admin"}));
    let reply = send(
        ctx.strict
            .user_route(Method::GET, user, "sockets")
            .bearer_auth(admin),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["history"].clone()
}

async fn expired_envelopes_are_deleted_from_storage(ctx: Arc<Ctx>) {
    // The strict server keeps 3 envelopes for 2 s. Nobody listens: the
    // envelopes are stored all the same, and the object's alarm deletes
    // them at their expiry without another publish.
    let user = unique_user("purge");
    let backend = strict_token(&ctx, "backend", json!({}));
    for n in 1..=5 {
        let r = publish_as(&ctx.strict, &backend, json!({"userId": user, "payload": n})).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let history = stored_history(&ctx, &user).await;
    assert_eq!(history["seq"], 5, "{history}");
    let stored = history["storedEnvelopes"]
        .as_u64()
        .expect("storedEnvelopes");
    assert!((1..=5).contains(&stored), "{history}");
    let deadline = Instant::now() + WAIT;
    loop {
        let history = stored_history(&ctx, &user).await;
        assert_eq!(history["seq"], 5, "the last seq is kept: {history}");
        if history["storedEnvelopes"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired envelopes still stored: {history}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sequence goes on, and the next envelope is kept (and deleted) in
    // its turn.
    let r = publish_as(&ctx.strict, &backend, json!({"userId": user, "payload": 6})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let history = stored_history(&ctx, &user).await;
    assert_eq!(history["seq"], 6, "{history}");
    // With history off the route says nothing of it.
    let off = sockets_of(&ctx.nohistory, &user).await;
    assert_eq!(off.status, 200);
    assert!(off.body.get("history").is_none(), "{}", off.body);
}

async fn bad_resume_frames_get_error_frames(ctx: Arc<Ctx>) {
    let user = unique_user("bad-resume");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    for frame in [
        json!({"type": "resume", "since": -1, "epoch": "e"}),
        json!({"type": "resume", "since": 1.5, "epoch": "e"}),
        json!({"type": "resume", "since": "1", "epoch": "e"}),
        json!({"type": "resume", "epoch": "e"}),
        json!({"type": "resume", "since": 1}),
        json!({"type": "resume", "since": 1, "epoch": 5}),
    ] {
        socket.send_json(frame).await;
        socket.expect_error("invalid_frame").await;
    }
    socket.ping().await;
}

async fn history_survives_a_restart(ctx: Arc<Ctx>) {
    let runtime = Restartable::new(
        "history-restart",
        ctx.server.secret.clone().expect("secret"),
    );
    let server = runtime.start().await;
    let user = unique_user("restart");
    publish(&server, &user, "t", json!(1)).await;
    publish(&server, &user, "t", json!(2)).await;
    let mut socket = Client::for_user(&server, &user).await;
    let (seq, epoch) = subscribe_at(&mut socket, json!([{}])).await;
    assert_eq!(seq, 2);
    drop(socket);
    Restartable::stop(server).await;

    let server = runtime.start().await;
    let mut socket = Client::for_user(&server, &user).await;
    let (after, same_epoch) = subscribe_at(&mut socket, json!([{}])).await;
    assert_eq!((after, &same_epoch), (2, &epoch), "seq and epoch continue");
    resume(&mut socket, json!(0), json!(epoch)).await;
    let (replayed, resumed) = replay(&mut socket).await;
    let payloads: Vec<&Value> = replayed.iter().map(|e| &e["payload"]).collect();
    assert_eq!(payloads, [1, 2]);
    assert_eq!(resumed["complete"], true);
    let (_, envelope) = tokio::join!(
        publish(&server, &user, "t", json!(3)),
        socket.ack_next(json!(null))
    );
    assert_eq!(envelope["seq"], 3);
    Restartable::stop(server).await;
}
