//! A stand-in for an API client's callback receiver: records every delivery (its headers and
//! body) and answers 500 to the first ones it is told to fail, as a receiver that is down does.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::sync::{Arc, Mutex};

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: String,
    /// What it answered.
    pub status: u16,
}

#[derive(Default)]
struct ReceiverState {
    deliveries: Vec<Delivery>,
    /// How many more deliveries to answer with 500.
    failures_left: usize,
    /// While set, every delivery is answered 500.
    down: bool,
}

#[derive(Clone)]
pub struct CallbackReceiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl CallbackReceiver {
    /// Starts on 127.0.0.1; the first `fail_first` deliveries are answered 500.
    pub async fn start(fail_first: usize) -> std::io::Result<CallbackReceiver> {
        let state = Arc::new(Mutex::new(ReceiverState { failures_left: fail_first, ..Default::default() }));
        let app = Router::new().route("/callback", post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/callback", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(CallbackReceiver { url, state })
    }

    /// Answers every delivery with 500 while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).down = down;
    }

    /// Every delivery so far, failed ones included, in the order they came.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).deliveries.clone()
    }
}

async fn receive(State(state): State<Arc<Mutex<ReceiverState>>>, headers: HeaderMap, body: String) -> StatusCode {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let status = if s.down {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if s.failures_left > 0 {
        s.failures_left -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    s.deliveries.push(Delivery { headers, body, status: status.as_u16() });
    status
}
