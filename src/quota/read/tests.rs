//! Tests of reading a whole request body: how much is allocated up front
//! and when the pieces are kept as they are.

use std::convert::Infallible;

use http_body::Frame;
use http_body_util::StreamBody;

use super::*;
use crate::quota::budget::BodyBudget;

fn frames(chunks: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = Infallible> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn a_false_content_length_sizes_nothing() {
    let budget = BodyBudget::new(1 << 30);
    let body = frames(&[&[1; 100], &[2; 100], &[3; 100]]);
    let bytes = read_whole(body, 1 << 30, Some(50_000_000), budget.hold(None, u64::MAX))
        .await
        .expect("read");
    assert_eq!(bytes.len(), 300);
    // What is held is what arrived, doubled at most: never 50 MB.
    let held = (1 << 30) - budget.available();
    assert!((300..=600).contains(&held), "{held}");
    drop(bytes);
    assert_eq!(budget.available(), 1 << 30);
}

#[tokio::test]
async fn an_honest_content_length_gets_a_buffer_of_its_size() {
    let budget = BodyBudget::new(1 << 30);
    let chunks: Vec<&'static [u8]> = vec![&[7; 1000]; 9];
    let bytes = read_whole(
        frames(&chunks),
        1 << 30,
        Some(9000),
        budget.hold(None, u64::MAX),
    )
    .await
    .expect("read");
    assert_eq!(bytes.len(), 9000);
    assert_eq!((1 << 30) - budget.available(), 9000);
}

#[tokio::test]
async fn one_piece_is_kept_as_it_is() {
    let budget = BodyBudget::new(1000);
    let bytes = read_whole(frames(&[b"hello"]), 1000, None, budget.hold(None, u64::MAX))
        .await
        .expect("read");
    assert_eq!(bytes, "hello");
    assert_eq!(budget.available(), 995);
}

/// A buffer doubling takes its slack only when it is free: with room for
/// the bytes but not for the doubled buffer, the body is read at once
/// (it used to wait the budget's 1 s for the slack, then fail).
#[tokio::test(start_paused = true)]
async fn a_doubling_without_room_for_its_slack_takes_what_it_needs() {
    let budget = BodyBudget::new(1000);
    let mut elsewhere = budget.hold(None, u64::MAX);
    elsewhere.grow(700).await.expect("room");
    let started = tokio::time::Instant::now();
    let body = frames(&[&[1; 100], &[2; 100], &[3; 100]]);
    let bytes = read_whole(body, 1000, None, budget.hold(None, u64::MAX))
        .await
        .expect("read with the room there is");
    assert_eq!(bytes.len(), 300);
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    assert_eq!(budget.available(), 0);
}
