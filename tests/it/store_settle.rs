//! The quota stores' contract on a reservation's life after admission
//! (phase: settle): settles count in all three windows and in the windows
//! reserved in, once however often they come, a released or expired
//! reservation stops counting, and an extend keeps one past its deadline.
//! These are steps of `store.rs`'s suite: its `contract!` runs each against
//! the memory store and a real Redis in every topology.

use chrono::TimeDelta;
use quota_proxy::periods::Period;
use quota_proxy::store::{PeriodUsage, Reservation};

use crate::store::{NOW, Subject, at, exceeded, limits, windows};

pub(crate) async fn settle_adds_to_all_three_windows(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(5, 5, 5), now).await;
    s.settle(&r, 3, now).await;
    assert_eq!(
        s.usage("alice", now).await,
        [PeriodUsage {
            used: 3,
            reserved: 0
        }; 3]
    );
}

pub(crate) async fn release_frees_the_unit(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 1, 1);
    let r = s.hold("alice", l, now).await;
    s.settle(&r, 0, now).await;
    assert_eq!(s.usage("alice", now).await, [PeriodUsage::default(); 3]);
    s.hold("alice", l, now).await;
}

pub(crate) async fn settle_twice_counts_once(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(0, 0, 0), now).await;
    s.settle(&r, 2, now).await;
    s.settle(&r, 2, now + TimeDelta::seconds(5)).await;
    assert_eq!(s.used("alice", now).await, [2, 2, 2]);

    // A release sent twice releases once, and holds nothing.
    let released = s.hold("alice", limits(0, 0, 0), now).await;
    s.settle(&released, 0, now).await;
    s.settle(&released, 0, now).await;
    assert_eq!(s.used("alice", now).await, [2, 2, 2]);
    assert_eq!(s.reserved("alice", now).await, [0, 0, 0]);
    // So does a settle of one unit.
    let one = s.hold("alice", limits(0, 0, 0), now).await;
    s.settle(&one, 1, now).await;
    s.settle(&one, 1, now).await;
    assert_eq!(s.used("alice", now).await, [3, 3, 3]);
}

pub(crate) async fn settle_of_unreserved_id_counts_once(s: Subject) {
    // How usage reported for an unflagged request is recorded.
    let now = at(NOW);
    let unflagged = Reservation {
        id: Reservation::new_id(),
        user: "alice".to_owned(),
        windows: windows(now),
        expires_at: now,
        keys_expire: false,
    };
    s.settle(&unflagged, 1, now).await;
    s.settle(&unflagged, 1, now).await;
    assert_eq!(
        s.usage("alice", now).await,
        [PeriodUsage {
            used: 1,
            reserved: 0
        }; 3]
    );
}

pub(crate) async fn expired_reservation_stops_counting(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 0, 0);
    s.hold("alice", l, now).await;
    let just_before = now + TimeDelta::milliseconds(59_999);
    assert_eq!(s.reserved("alice", just_before).await, [1, 1, 1]);
    assert_eq!(
        s.reserve("alice", l, just_before).await,
        exceeded(Period::Daily, [1, 1, 1])
    );
    // The deadline itself is past.
    let deadline = now + TimeDelta::seconds(60);
    assert_eq!(s.reserved("alice", deadline).await, [0, 0, 0]);
    s.hold("alice", l, deadline).await;
}

pub(crate) async fn settle_after_expiry_counts_once(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(0, 0, 0), now).await;
    let late = now + TimeDelta::minutes(5);
    s.settle(&r, 1, late).await;
    s.settle(&r, 1, late).await;
    assert_eq!(
        s.usage("alice", late).await,
        [PeriodUsage {
            used: 1,
            reserved: 0
        }; 3]
    );
}

pub(crate) async fn settle_counts_in_the_windows_reserved_in(s: Subject) {
    let before_midnight = at("2031-05-31T23:59:30Z");
    let after_midnight = at("2031-06-01T00:00:30Z");
    let r = s.hold("alice", limits(0, 0, 0), before_midnight).await;
    s.settle(&r, 2, after_midnight).await;
    assert_eq!(
        s.usage_in("alice", &windows(before_midnight), after_midnight)
            .await
            .map(|u| u.used),
        [2, 2, 2]
    );
    // June has nothing; the week (Monday 05-26 to 06-02) is the same one.
    assert_eq!(s.used("alice", after_midnight).await, [0, 2, 0]);
}

pub(crate) async fn extend_keeps_reservation_past_its_deadline(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 0, 0);
    let r = s.hold("alice", l, now).await;
    s.store
        .extend(
            &r,
            now + TimeDelta::minutes(5),
            now + TimeDelta::seconds(30),
        )
        .await
        .expect("extend");
    let past_ttl = now + TimeDelta::minutes(2);
    assert_eq!(s.reserved("alice", past_ttl).await, [1, 1, 1]);
    assert_eq!(
        s.reserve("alice", l, past_ttl).await,
        exceeded(Period::Daily, [1, 1, 1])
    );
    let past_extension = now + TimeDelta::minutes(5);
    assert_eq!(s.reserved("alice", past_extension).await, [0, 0, 0]);
}

pub(crate) async fn extend_of_gone_reservation_does_nothing(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(0, 0, 0), now).await;
    let expired = now + TimeDelta::minutes(2);
    s.store
        .extend(&r, expired + TimeDelta::hours(1), expired)
        .await
        .expect("extend");
    assert_eq!(s.reserved("alice", expired).await, [0, 0, 0]);

    let settled = s.hold("bob", limits(0, 0, 0), now).await;
    s.settle(&settled, 1, now).await;
    s.store
        .extend(&settled, now + TimeDelta::hours(1), now)
        .await
        .expect("extend");
    assert_eq!(s.reserved("bob", now).await, [0, 0, 0]);
}
