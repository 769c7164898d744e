//! Tests of the body budget: holding, waiting, refusing, one connection's
//! share, and cutting stalled bodies.

use futures_util::FutureExt;

use super::stalled::STALLED_AFTER;
use super::*;

#[tokio::test(start_paused = true)]
async fn bytes_come_back_when_dropped() {
    let budget = BodyBudget::new(1000);
    let mut a = budget.hold(None, u64::MAX);
    a.grow(600).await.expect("room");
    assert_eq!(budget.available(), 400);
    let mut b = budget.hold(None, u64::MAX);
    b.grow(400).await.expect("room");
    assert_eq!(budget.available(), 0);
    drop(a);
    assert_eq!(budget.available(), 600);
    drop(b);
    assert_eq!(budget.available(), 1000);
}

#[tokio::test(start_paused = true)]
async fn a_full_budget_refuses_after_the_wait_and_keeps_nothing() {
    let budget = BodyBudget::new(1000);
    let mut a = budget.hold(None, u64::MAX);
    a.grow(900).await.expect("room");
    let started = tokio::time::Instant::now();
    let mut b = budget.hold(None, u64::MAX);
    b.grow(50).await.expect("room");
    let refused = b.grow(100).await.expect_err("no room");
    assert!(
        matches!(refused, NoRoom::Full(BudgetFull::Process(1000))),
        "{refused:?}"
    );
    assert_eq!(started.elapsed(), BUDGET_WAIT);
    assert_eq!(b.bytes(), 50);
    drop(b);
    assert_eq!(budget.available(), 100);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_room_freed_during_its_wait() {
    let budget = BodyBudget::new(1000);
    let mut a = budget.hold(None, u64::MAX);
    a.grow(1000).await.expect("room");
    let waiter = tokio::spawn({
        let budget = budget.clone();
        async move {
            let mut b = budget.hold(None, u64::MAX);
            b.grow(500).await.map(|()| b.bytes())
        }
    });
    tokio::time::sleep(BUDGET_WAIT / 2).await;
    drop(a);
    assert_eq!(waiter.await.expect("joined").expect("room came"), 500);
}

#[tokio::test(start_paused = true)]
async fn one_connection_holds_its_share_and_no_more() {
    let budget = BodyBudget::new(1_000_000);
    let share = BodyShare::new();
    // max_body_bytes 100: the connection's bodies hold 200 at most.
    let mut first = budget.hold(Some(&share), 100);
    first.grow(150).await.expect("within the share");
    let mut second = budget.hold(Some(&share), 100);
    second.grow(50).await.expect("the rest of the share");
    let started = tokio::time::Instant::now();
    let mut third = budget.hold(Some(&share), 100);
    let refused = third.grow(1).await.expect_err("the share is held");
    assert!(
        matches!(refused, NoRoom::Full(BudgetFull::Connection(200))),
        "{refused:?}"
    );
    assert_eq!(started.elapsed(), BUDGET_WAIT);
    assert_eq!(
        budget.available(),
        1_000_000 - 200,
        "a refusal takes nothing"
    );
    // Another connection, and a request with no share, are not touched.
    let other = BodyShare::new();
    budget
        .hold(Some(&other), 100)
        .grow(200)
        .await
        .expect("its own share");
    budget.hold(None, 100).grow(5000).await.expect("no share");
    // What a body gives back, its connection may take again.
    drop(first);
    third.grow(150).await.expect("room again");
    drop((second, third));
    assert_eq!(budget.available(), 1_000_000);
}

#[tokio::test(start_paused = true)]
async fn a_body_alone_never_waits_for_its_share() {
    let budget = BodyBudget::new(1_000_000);
    let share = BodyShare::new();
    let mut alone = budget.hold(Some(&share), 1000);
    // As a buffer doubling past the body's length takes it.
    alone.grow(1024).await.expect("room");
    alone.grow(976).await.expect("room");
    assert_eq!(alone.bytes(), BodyShare::bytes(1000));
}

#[tokio::test(start_paused = true)]
async fn the_share_and_the_budget_wait_one_deadline_together() {
    let budget = BodyBudget::new(1000);
    let share = BodyShare::new();
    let mut held = budget.hold(Some(&share), 500);
    held.grow(1000).await.expect("room");
    // The share frees room after half the wait; the budget never does.
    let waiter = tokio::spawn({
        let budget = budget.clone();
        let share = share.clone();
        async move {
            let started = tokio::time::Instant::now();
            let refused = budget.hold(Some(&share), 500).grow(100).await;
            (refused, started.elapsed())
        }
    });
    tokio::time::sleep(BUDGET_WAIT / 2).await;
    held.release(100);
    let mut other = budget.hold(None, 500);
    other
        .grow(100)
        .await
        .expect("the budget's room, taken at once");
    let (refused, waited) = waiter.await.expect("joined");
    assert!(
        matches!(refused, Err(NoRoom::Full(BudgetFull::Process(1000)))),
        "{refused:?}"
    );
    assert_eq!(waited, BUDGET_WAIT, "one wait in all, not one for each");
}

#[tokio::test]
async fn more_than_the_whole_budget_is_refused_at_once() {
    let budget = BodyBudget::new(10);
    assert!(budget.hold(None, u64::MAX).grow(11).await.is_err());
}

/// A body holding `bytes` whose reader has waited once for its client (so
/// it is watched) and goes on.
async fn watched(budget: &BodyBudget, bytes: usize) -> Held {
    let mut held = budget.hold(None, u64::MAX);
    held.grow(bytes).await.expect("room");
    let next = held.until_cut(std::future::pending::<()>()).now_or_never();
    assert!(next.is_none(), "a pending frame");
    held
}

/// A body holding `bytes` whose client then sends nothing: its reader
/// waits for the next frame until the body is cut, then drops what it held.
async fn stalled_reader(budget: &BodyBudget, bytes: usize) -> tokio::task::JoinHandle<BodyCut> {
    stalled_in(budget.hold(None, u64::MAX), bytes).await
}

/// `held` grown to `bytes`, then stalled as [`stalled_reader`]'s.
async fn stalled_in(mut held: Held, bytes: usize) -> tokio::task::JoinHandle<BodyCut> {
    held.grow(bytes).await.expect("room");
    tokio::spawn(async move {
        held.until_cut(std::future::pending::<()>())
            .await
            .expect_err("only a cut ends a stalled body")
    })
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_cut_for_a_body_that_finds_no_room() {
    let budget = BodyBudget::new(200 * 1024);
    let stalled = stalled_reader(&budget, 128 * 1024).await;
    tokio::time::sleep(STALLED_AFTER).await;
    let started = tokio::time::Instant::now();
    let mut newcomer = budget.hold(None, u64::MAX);
    newcomer
        .grow(100 * 1024)
        .await
        .expect("room made by the cut");
    assert!(started.elapsed() < BUDGET_WAIT, "{:?}", started.elapsed());
    assert!(stalled.is_finished(), "the stalled reader was stopped");
    stalled
        .await
        .expect("the stalled reader ended with its cut");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_keeps_arriving_is_not_cut() {
    let budget = BodyBudget::new(200 * 1024);
    let mut arriving = watched(&budget, 128 * 1024).await;
    // It comes once the arriving body has been watched for two seconds.
    let newcomer = tokio::spawn({
        let budget = budget.clone();
        async move {
            tokio::time::sleep(STALLED_AFTER * 2).await;
            budget.hold(None, u64::MAX).grow(100 * 1024).await
        }
    });
    // 16 KiB every half second, for four seconds: fresh all along.
    for _ in 0..8 {
        tokio::time::sleep(STALLED_AFTER / 2).await;
        arriving.arrived(FRESH_BYTES as usize);
        let next = arriving.until_cut(std::future::ready(())).await;
        assert!(next.is_ok(), "an arriving body was cut");
    }
    let refused = newcomer.await.expect("joined");
    assert!(
        matches!(refused, Err(NoRoom::Full(BudgetFull::Process(_)))),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_read_whole_or_never_waited_for_is_never_cut() {
    let budget = BodyBudget::new(200 * 1024);
    let mut whole = watched(&budget, 64 * 1024).await;
    whole.read_whole();
    let mut at_once = budget.hold(None, u64::MAX);
    at_once.grow(64 * 1024).await.expect("room");
    let next = at_once.until_cut(std::future::ready(())).await;
    assert!(next.is_ok());
    let small = stalled_reader(&budget, 1).await;
    tokio::time::sleep(STALLED_AFTER * 2).await;
    // The newcomer lacks one byte: the one-byte stalled body covers it.
    let mut newcomer = budget.hold(None, u64::MAX);
    newcomer
        .grow(72 * 1024)
        .await
        .expect("room made by one small cut");
    // Only the one-byte body that waited for its client was cut.
    assert!(
        small.is_finished(),
        "a stalled body is cut whatever its size"
    );
    assert_eq!((whole.bytes(), at_once.bytes()), (64 * 1024, 64 * 1024));
    assert!(at_once.until_cut(std::future::ready(())).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn only_as_many_as_lack_are_cut_the_longest_stalled_first() {
    let budget = BodyBudget::new(300 * 1024);
    let oldest = stalled_reader(&budget, 100 * 1024).await;
    tokio::time::sleep(STALLED_AFTER / 4).await;
    let middle = stalled_reader(&budget, 100 * 1024).await;
    let newest = stalled_reader(&budget, 100 * 1024).await;
    tokio::time::sleep(STALLED_AFTER * 2).await;
    let mut newcomer = budget.hold(None, u64::MAX);
    newcomer
        .grow(80 * 1024)
        .await
        .expect("room made by one cut");
    tokio::task::yield_now().await;
    assert!(oldest.is_finished(), "the longest stalled body was cut");
    assert!(
        !middle.is_finished() && !newest.is_finished(),
        "one cut was enough"
    );
}

/// A body of `share`'s connection holding 100 bytes whose client then
/// sends nothing, as [`stalled_reader`].
async fn stalled_on(budget: &BodyBudget, share: &BodyShare) -> tokio::task::JoinHandle<BodyCut> {
    stalled_in(budget.hold(Some(share), 100), 100).await
}

/// A connection that carries many clients (an ingress's): one client's
/// stalled bodies hold the share, and a sibling whose body arrives cuts
/// them, though the budget has room; a stalled body of another connection
/// is not touched for the share.
#[tokio::test(start_paused = true)]
async fn a_body_waiting_for_its_share_cuts_its_connections_stalled_bodies_only() {
    let budget = BodyBudget::new(1_000_000);
    let share = BodyShare::new();
    let first = stalled_on(&budget, &share).await;
    let second = stalled_on(&budget, &share).await;
    let elsewhere = stalled_on(&budget, &BodyShare::new()).await;
    tokio::time::sleep(STALLED_AFTER).await;
    let started = tokio::time::Instant::now();
    let mut sibling = budget.hold(Some(&share), 100);
    sibling.grow(50).await.expect("room made by a cut");
    assert!(started.elapsed() < BUDGET_WAIT, "{:?}", started.elapsed());
    tokio::task::yield_now().await;
    assert_eq!(
        usize::from(first.is_finished()) + usize::from(second.is_finished()),
        1,
        "one stalled sibling cut, as many as lacked"
    );
    assert!(!elsewhere.is_finished(), "another connection's is not cut");
    elsewhere.abort();
}

/// A stalled body cut while it waits for room itself stops at once (its
/// client gets the cut's 408, not a 503 at the end of its wait) and gives
/// its bytes back then: the body that cut it does not wait out the other's
/// wait, nor time out first.
#[tokio::test(start_paused = true)]
async fn a_body_cut_while_it_waits_for_room_stops_at_once() {
    let budget = BodyBudget::new(1000);
    let mut stalled = budget.hold(None, u64::MAX);
    stalled.grow(600).await.expect("room");
    // Its reader waits for its client once: it is watched from then.
    stalled
        .until_cut(tokio::time::sleep(std::time::Duration::from_millis(10)))
        .await
        .expect("not cut");
    let mut other = budget.hold(None, u64::MAX);
    other.grow(400).await.expect("the rest of the budget");
    tokio::time::sleep(STALLED_AFTER).await;
    let waiting = tokio::spawn(async move { stalled.grow(100).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let mut newcomer = budget.hold(None, u64::MAX);
    newcomer.grow(500).await.expect("room made by the cut");
    assert!(
        started.elapsed() < CUT_LOOK_EVERY,
        "{:?}",
        started.elapsed()
    );
    let stopped = waiting.await.expect("joined");
    assert!(matches!(stopped, Err(NoRoom::Cut(_))), "{stopped:?}");
}

/// A buffer doubling asks for slack it may never use: when the slack is
/// not free it takes only what the bytes need, and cuts nothing for it.
#[tokio::test(start_paused = true)]
async fn slack_is_taken_only_when_free() {
    let budget = BodyBudget::new(1000);
    let stalled = stalled_reader(&budget, 300).await;
    let mut other = budget.hold(None, u64::MAX);
    other.grow(500).await.expect("room");
    tokio::time::sleep(STALLED_AFTER * 2).await;
    let mut doubling = budget.hold(None, u64::MAX);
    assert!(!doubling.try_grow(400), "no slack while 200 are free");
    assert_eq!(budget.available(), 200, "a failed try takes nothing");
    assert!(doubling.try_grow(150));
    assert_eq!(doubling.bytes(), 150);
    assert!(!stalled.is_finished(), "no cut for slack");
    stalled.abort();
}

/// A body cut already stops at its next look for room instead of cutting
/// others for room it will not take.
#[tokio::test(start_paused = true)]
async fn a_body_cut_already_cuts_no_one() {
    let budget = BodyBudget::new(1000);
    let mut condemned = watched(&budget, 100).await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let bystander = stalled_reader(&budget, 800).await;
    tokio::time::sleep(STALLED_AFTER * 2).await;
    // A newcomer needing 150 cuts the longest stalled that covers it: the
    // condemned body (watched first).
    let mut newcomer = budget.hold(None, u64::MAX);
    let taken = tokio::spawn(async move { newcomer.grow(150).await.map(|()| newcomer) });
    tokio::task::yield_now().await;
    let stopped = condemned.grow(500).await;
    assert!(matches!(stopped, Err(NoRoom::Cut(_))), "{stopped:?}");
    drop(condemned);
    taken.await.expect("joined").expect("room made");
    assert!(!bystander.is_finished(), "the condemned body cut another");
    bystander.abort();
}

/// Stalled bodies that could not free enough together are not cut: the
/// asker would get 503 all the same, and they would lose their uploads
/// for nothing.
#[tokio::test(start_paused = true)]
async fn no_cut_when_all_the_stalled_would_not_be_enough() {
    let budget = BodyBudget::new(1000);
    let mut whole = budget.hold(None, u64::MAX);
    whole.grow(900).await.expect("room");
    whole.read_whole();
    let stalled = stalled_reader(&budget, 50).await;
    tokio::time::sleep(STALLED_AFTER * 2).await;
    let refused = budget.hold(None, u64::MAX).grow(200).await;
    assert!(matches!(refused, Err(NoRoom::Full(_))), "{refused:?}");
    assert!(!stalled.is_finished(), "cut for nothing");
    stalled.abort();
}

/// A grow past the whole share (its size fixed before a reload raised
/// `max_body_bytes`) is refused at once: no wait and no cut can make room.
#[tokio::test(start_paused = true)]
async fn more_than_the_whole_share_is_refused_at_once() {
    let budget = BodyBudget::new(1_000_000);
    let share = BodyShare::new();
    let sibling = stalled_on(&budget, &share).await;
    tokio::time::sleep(STALLED_AFTER * 2).await;
    let started = tokio::time::Instant::now();
    let mut big = budget.hold(Some(&share), 100);
    let refused = big.grow(201).await;
    assert!(
        matches!(refused, Err(NoRoom::Full(BudgetFull::Connection(200)))),
        "{refused:?}"
    );
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    assert!(!sibling.is_finished(), "cut for nothing");
    sibling.abort();
}
