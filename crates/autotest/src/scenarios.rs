//! The black-box scenarios: each connects its own users to its own fresh group
//! (names carry a per-run suffix, so runs against a shared deployment never
//! meet), checks what the protocol promises, and closes its connections.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use next_chat_client::{Client, ClientOptions, Event, Events, JoinResult, Message, Protocol};
use next_chat_contract::Method;
use tokio::task::JoinSet;

/// What a scenario returns: a short note for the report line, or why it failed.
pub type Outcome = anyhow::Result<String>;

type Body = Box<dyn FnOnce(Run) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send>;

pub struct Scenario {
    pub name: String,
    /// A scenario still running after this fails (a lost message must not hang the run).
    pub time_limit: Duration,
    pub body: Body,
}

impl Scenario {
    pub fn new<F, Fut>(name: impl Into<String>, time_limit: Duration, body: F) -> Scenario
    where
        F: FnOnce(Run) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        Scenario { name: name.into(), time_limit, body: Box::new(move |run| Box::pin(body(run))) }
    }
}

/// How long a scenario waits for a message it expects.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
const SCENARIO_TIME_LIMIT: Duration = Duration::from_secs(60);
/// The original project's concurrency scenario: this many sends at once...
const CONCURRENT_SENDS: usize = 100;
/// ...all received within this long of the first.
const CONCURRENT_DEADLINE: Duration = Duration::from_secs(5);
/// Messages sent before a newcomer joins in the history scenario.
const HISTORY_MESSAGES: usize = 5;

/// What every scenario of one run shares: where to connect, how to prove who
/// each user is, and the run's unique suffix.
#[derive(Clone)]
pub struct Run {
    url: String,
    /// Another instance of the same deployment, for the cross-instance scenarios.
    peer_url: Option<String>,
    protocol: Protocol,
    suffix: String,
    credentials: Credentials,
    ca_file: Option<PathBuf>,
}

/// How a scenario's user proves its id: the scenarios need many users, so with
/// `--auth jwt` the runner mints each one's token with the server's HS256 secret.
#[derive(Clone)]
pub enum Credentials {
    /// The server runs `--auth header`: the user id is the credential.
    UserId,
    /// The server runs `--auth jwt` with this HS256 secret, and checks these claims.
    Jwt { secret: Vec<u8>, issuer: Option<String>, audience: Option<String> },
}

/// How long a minted token is valid: longer than any run.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl Credentials {
    fn for_user(&self, user: &str) -> anyhow::Result<String> {
        let Credentials::Jwt { secret, issuer, audience } = self else {
            return Ok(user.to_owned());
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = serde_json::json!({
            "sub": user,
            "iat": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
        });
        if let Some(issuer) = issuer {
            claims["iss"] = issuer.as_str().into();
        }
        if let Some(audience) = audience {
            claims["aud"] = audience.as_str().into();
        }
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
    }
}

impl Run {
    pub fn new(
        url: String,
        peer_url: Option<String>,
        protocol: Protocol,
        credentials: Credentials,
        ca_file: Option<PathBuf>,
    ) -> Run {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let suffix = format!("{:x}", (nanos as u64) ^ (u64::from(std::process::id()) << 40));
        Run { url, peer_url, protocol, suffix, credentials, ca_file }
    }

    /// A group id of this run, e.g. `autotest-history-18c2...`.
    pub fn group(&self, name: &str) -> String {
        format!("autotest-{name}-{}", self.suffix)
    }

    /// A user id of this run.
    pub fn user(&self, name: &str) -> String {
        format!("autotest-{name}-{}", self.suffix)
    }

    pub async fn connect(&self, user: &str) -> anyhow::Result<Member> {
        self.connect_to(&self.url, user).await
    }

    /// Connects `user` to the other instance (`--peer-url`).
    pub async fn connect_peer(&self, user: &str) -> anyhow::Result<Member> {
        let peer = self.peer_url.as_deref().context("no --peer-url")?;
        self.connect_to(peer, user).await
    }

    async fn connect_to(&self, url: &str, user: &str) -> anyhow::Result<Member> {
        let mut options = ClientOptions::new(url.to_string(), self.credentials.for_user(user)?);
        options.protocol = self.protocol;
        options.ca_file = self.ca_file.clone();
        let (client, events) = Client::connect(options)
            .await
            .with_context(|| format!("{user} cannot connect to {url}"))?;
        Ok(Member { user: user.to_string(), client, events })
    }
}

/// One connected user and its events.
pub struct Member {
    pub user: String,
    pub client: Client,
    pub events: Events,
}

impl Member {
    /// Joins `group`, which must have room, and returns the history it got.
    pub async fn join(&mut self, group: &str) -> anyhow::Result<Vec<Message>> {
        let result = self
            .client
            .join_group(group)
            .await
            .with_context(|| format!("{} JoinGroup {group}", self.user))?;
        ensure!(result == JoinResult::Joined, "{} got {result:?} joining {group}", self.user);
        // The client delivers OnHistory before JoinGroup's completion returns.
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        loop {
            match self.next_event(deadline).await? {
                Event::History { group: g, messages } if g == group => return Ok(messages),
                Event::Message(_) => {}
                other => bail!("{} expected OnHistory for {group}, got {other:?}", self.user),
            }
        }
    }

    /// Waits for messages of `group` until every text in `texts` has arrived
    /// (others are ignored), or `deadline`. Returns them in arrival order.
    pub async fn receive_texts(
        &mut self,
        group: &str,
        texts: &[String],
        deadline: Instant,
    ) -> anyhow::Result<Vec<Message>> {
        let mut missing: HashSet<&str> = texts.iter().map(String::as_str).collect();
        let mut received = Vec::new();
        while !missing.is_empty() {
            let event = self.next_event(deadline).await.with_context(|| {
                format!(
                    "{} still waits for {} of {} messages",
                    self.user,
                    missing.len(),
                    texts.len()
                )
            })?;
            match event {
                Event::Message(message) if message.group_id == group => {
                    if missing.remove(message.text.as_str()) {
                        received.push(message);
                    }
                }
                Event::Message(_) | Event::History { .. } => {}
                other => bail!("{} lost its connection: {other:?}", self.user),
            }
        }
        Ok(received)
    }

    async fn next_event(&mut self, deadline: Instant) -> anyhow::Result<Event> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => bail!("{}'s connection has ended", self.user),
            Err(_) => bail!("{} timed out", self.user),
        }
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}

/// The scenarios, in the order they run.
pub fn all(max_members: usize) -> Vec<Scenario> {
    vec![
        Scenario::new("send and receive one message", SCENARIO_TIME_LIMIT, send_and_receive),
        Scenario::new(
            format!(
                "{CONCURRENT_SENDS} concurrent sends all received within {CONCURRENT_DEADLINE:?}"
            ),
            SCENARIO_TIME_LIMIT,
            concurrent_sends,
        ),
        Scenario::new(
            "another user's message is received",
            SCENARIO_TIME_LIMIT,
            other_users_message,
        ),
        Scenario::new(
            format!("user {} of a group gets NoRoom", max_members + 1),
            SCENARIO_TIME_LIMIT,
            move |run| no_room(run, max_members),
        ),
        Scenario::new("history on join", SCENARIO_TIME_LIMIT, history_on_join),
    ]
}

/// The scenarios that need two instances of one deployment (`--peer-url`):
/// users on both share groups.
pub fn cross_instance(max_members: usize) -> Vec<Scenario> {
    vec![
        Scenario::new(
            format!(
                "{CONCURRENT_SENDS} concurrent sends on one instance received in order on the other, and a reply back"
            ),
            SCENARIO_TIME_LIMIT,
            across_instances,
        ),
        Scenario::new(
            "history on join from the other instance",
            SCENARIO_TIME_LIMIT,
            history_across_instances,
        ),
        Scenario::new(
            format!("user {} of a group spread over both instances gets NoRoom", max_members + 1),
            SCENARIO_TIME_LIMIT,
            move |run| no_room_across_instances(run, max_members),
        ),
    ]
}

async fn send_and_receive(run: Run) -> Outcome {
    let group = run.group("one");
    let mut ann = run.connect(&run.user("ann")).await?;
    ann.client.create_group(&group).await.context(Method::CreateGroup.name())?;
    ann.join(&group).await?;
    let text = format!("hello from {}", ann.user);
    let sent = Instant::now();
    ann.client.send_message(&group, &text).await.context(Method::SendMessage.name())?;
    let received =
        ann.receive_texts(&group, std::slice::from_ref(&text), sent + RECEIVE_TIMEOUT).await?;
    let message = &received[0];
    ensure!(
        message.author_id == ann.user,
        "authorId is {:?}, not {:?}",
        message.author_id,
        ann.user
    );
    ensure!(message.group_id == group, "groupId is {:?}, not {group:?}", message.group_id);
    let latency = sent.elapsed();
    ann.close().await;
    Ok(format!("round trip {} ms", latency.as_millis()))
}

async fn concurrent_sends(run: Run) -> Outcome {
    let group = run.group("concurrent");
    let mut ann = run.connect(&run.user("ann")).await?;
    let mut bob = run.connect(&run.user("bob")).await?;
    ann.join(&group).await?;
    bob.join(&group).await?;
    let texts: Vec<String> = (0..CONCURRENT_SENDS).map(|i| format!("concurrent {i}")).collect();
    let started = Instant::now();
    let mut sends = JoinSet::new();
    for text in texts.clone() {
        let (client, group) = (ann.client.clone(), group.clone());
        sends.spawn(async move { client.send_message(&group, &text).await });
    }
    let deadline = started + CONCURRENT_DEADLINE;
    // Both the sender's connection and another member's receive every message.
    let bob_received = bob.receive_texts(&group, &texts, deadline).await;
    let ann_received = ann.receive_texts(&group, &texts, deadline).await;
    let mut failures = 0;
    while let Some(result) = sends.join_next().await {
        if !matches!(result, Ok(Ok(()))) {
            failures += 1;
        }
    }
    ensure!(failures == 0, "{failures} of {CONCURRENT_SENDS} sends failed");
    let bob_received = bob_received?;
    ann_received?;
    let took = started.elapsed();
    // Every member sees the group's messages in the same order: ids increase.
    ensure!(
        bob_received.windows(2).all(|w| id_key(&w[0].id) < id_key(&w[1].id)),
        "message ids do not increase in delivery order"
    );
    ann.close().await;
    bob.close().await;
    Ok(format!("all received in {} ms", took.as_millis()))
}

async fn other_users_message(run: Run) -> Outcome {
    let group = run.group("other");
    let mut ann = run.connect(&run.user("ann")).await?;
    let mut bob = run.connect(&run.user("bob")).await?;
    ann.join(&group).await?;
    bob.join(&group).await?;
    let text = format!("hi ann, this is {}", bob.user);
    bob.client.send_message(&group, &text).await.context(Method::SendMessage.name())?;
    let received = ann.receive_texts(&group, &[text], Instant::now() + RECEIVE_TIMEOUT).await?;
    ensure!(
        received[0].author_id == bob.user,
        "authorId is {:?}, not {:?}",
        received[0].author_id,
        bob.user
    );
    ann.close().await;
    bob.close().await;
    Ok(String::new())
}

async fn no_room(run: Run, max_members: usize) -> Outcome {
    let group = run.group("full");
    let mut members = Vec::with_capacity(max_members);
    let result = async {
        for i in 0..max_members {
            let mut member = run.connect(&run.user(&format!("m{i}"))).await?;
            let joined = member.join(&group).await.with_context(|| format!("member {}", i + 1));
            members.push(member);
            joined?;
        }
        let extra = run.connect(&run.user("extra")).await?;
        let result = extra.client.join_group(&group).await.context(Method::JoinGroup.name())?;
        extra.close().await;
        ensure!(
            result == JoinResult::NoRoom,
            "user {} got {result:?}, not NoRoom (is the server's max_members {max_members}?)",
            max_members + 1
        );
        Ok(String::new())
    }
    .await;
    for member in members {
        member.close().await;
    }
    result
}

async fn history_on_join(run: Run) -> Outcome {
    let group = run.group("history");
    let mut ann = run.connect(&run.user("ann")).await?;
    ann.join(&group).await?;
    let texts: Vec<String> = (0..HISTORY_MESSAGES).map(|i| format!("history {i}")).collect();
    for text in &texts {
        ann.client.send_message(&group, text).await.context(Method::SendMessage.name())?;
    }
    let mut bob = run.connect(&run.user("bob")).await?;
    let history = bob.join(&group).await?;
    let got: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    ensure!(got == texts, "bob's history on join is {got:?}, expected {texts:?}");
    ensure!(history.iter().all(|m| m.author_id == ann.user), "history has the wrong authorId");
    // GetHistory reads the same messages back.
    let fetched =
        bob.client.get_history(&group, None, 100).await.context(Method::GetHistory.name())?;
    let fetched: Vec<&str> = fetched.iter().map(|m| m.text.as_str()).collect();
    ensure!(fetched == texts, "GetHistory returned {fetched:?}, expected {texts:?}");
    ann.close().await;
    bob.close().await;
    Ok(String::new())
}

/// Message ids are `MILLIS-SEQ` in the servers we know; compare them as
/// numbers where they are, else as strings.
fn id_key(id: &str) -> (u64, u64, String) {
    match id.split_once('-').map(|(a, b)| (a.parse(), b.parse())) {
        Some((Ok(a), Ok(b))) => (a, b, String::new()),
        _ => (u64::MAX, u64::MAX, id.to_string()),
    }
}

async fn across_instances(run: Run) -> Outcome {
    let group = run.group("across");
    let mut ann = run.connect(&run.user("ann")).await?;
    let mut bob = run.connect_peer(&run.user("bob")).await?;
    ann.join(&group).await?;
    bob.join(&group).await?;
    let texts: Vec<String> = (0..CONCURRENT_SENDS).map(|i| format!("across {i}")).collect();
    let started = Instant::now();
    let mut sends = JoinSet::new();
    for text in texts.clone() {
        let (client, group) = (ann.client.clone(), group.clone());
        sends.spawn(async move { client.send_message(&group, &text).await });
    }
    let received = bob.receive_texts(&group, &texts, started + CONCURRENT_DEADLINE).await;
    let mut failures = 0;
    while let Some(result) = sends.join_next().await {
        if !matches!(result, Ok(Ok(()))) {
            failures += 1;
        }
    }
    ensure!(failures == 0, "{failures} of {CONCURRENT_SENDS} sends failed");
    let received = received?;
    let took = started.elapsed();
    ensure!(
        received.windows(2).all(|w| id_key(&w[0].id) < id_key(&w[1].id)),
        "message ids do not increase in delivery order on the other instance"
    );
    let reply = format!("reply from {} on the other instance", bob.user);
    bob.client.send_message(&group, &reply).await.context(Method::SendMessage.name())?;
    let back = ann.receive_texts(&group, &[reply], Instant::now() + RECEIVE_TIMEOUT).await?;
    ensure!(
        back[0].author_id == bob.user,
        "authorId is {:?}, not {:?}",
        back[0].author_id,
        bob.user
    );
    ann.close().await;
    bob.close().await;
    Ok(format!("all received across in {} ms", took.as_millis()))
}

async fn history_across_instances(run: Run) -> Outcome {
    let group = run.group("history-across");
    let mut ann = run.connect(&run.user("ann")).await?;
    ann.join(&group).await?;
    let texts: Vec<String> = (0..HISTORY_MESSAGES).map(|i| format!("history across {i}")).collect();
    for text in &texts {
        ann.client.send_message(&group, text).await.context(Method::SendMessage.name())?;
    }
    let mut bob = run.connect_peer(&run.user("bob")).await?;
    let history = bob.join(&group).await?;
    let got: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    ensure!(
        got == texts,
        "bob's history on join on the other instance is {got:?}, expected {texts:?}"
    );
    let fetched =
        bob.client.get_history(&group, None, 100).await.context(Method::GetHistory.name())?;
    let fetched: Vec<&str> = fetched.iter().map(|m| m.text.as_str()).collect();
    ensure!(
        fetched == texts,
        "GetHistory on the other instance returned {fetched:?}, expected {texts:?}"
    );
    ann.close().await;
    bob.close().await;
    Ok(String::new())
}

async fn no_room_across_instances(run: Run, max_members: usize) -> Outcome {
    let group = run.group("full-across");
    let mut members = Vec::with_capacity(max_members);
    let result = async {
        for i in 0..max_members {
            let user = run.user(&format!("m{i}"));
            let mut member = if i % 2 == 0 {
                run.connect(&user).await?
            } else {
                run.connect_peer(&user).await?
            };
            let joined = member.join(&group).await.with_context(|| format!("member {}", i + 1));
            members.push(member);
            joined?;
        }
        // The newcomer's instance holds only half of the members: the limit is the deployment's.
        let extra = run.connect_peer(&run.user("extra")).await?;
        let result = extra.client.join_group(&group).await.context(Method::JoinGroup.name())?;
        extra.close().await;
        ensure!(
            result == JoinResult::NoRoom,
            "user {} got {result:?}, not NoRoom (is the server's max_members {max_members}?)",
            max_members + 1
        );
        Ok(String::new())
    }
    .await;
    for member in members {
        member.close().await;
    }
    result
}
