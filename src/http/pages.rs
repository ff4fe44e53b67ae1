//! The status page and the action browser, rendered as HTML on the server. Everything shown that a
//! client or an action chose (names, arguments, environment, output bytes) is escaped; output is
//! shown up to a bound and can be downloaded whole.

use std::fmt::Write as _;

use axum::http::StatusCode;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use prost::Message;
use strata_backends::{Digest, DigestFunction};

use super::ActionQuery;
use crate::admin::Admin;
use crate::admin::client::ratio;
use crate::cas::Cas;
use crate::units::ByteSize;

/// How much of stdout and stderr a page shows.
const SHOWN_OUTPUT: u64 = 64 << 10;
/// Entries of an output tree a page lists.
const SHOWN_TREE_ENTRIES: usize = 1000;
const RECENT_OPERATIONS: usize = 25;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em 2em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}\
h3{font-size:1em;margin:1em 0 .3em}table{border-collapse:collapse;margin:.3em 0}\
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}th{background:#eee}\
td.n{text-align:right;font-variant-numeric:tabular-nums}code,pre{font:12px ui-monospace,monospace}\
pre{background:#fff;border:1px solid #ddd;padding:.5em;max-height:30em;overflow:auto;white-space:pre-wrap}\
.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}.muted{color:#777}a{color:#036}";

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
fn url(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\
         <body><p class=\"muted\"><a href=\"/\">status</a> · <a href=\"/action\">action browser</a> · <a href=\"/metrics\">metrics</a> · \
         <a href=\"/readyz\">readyz</a></p>{body}</body></html>\n",
        esc(title)
    )
}

pub fn parse_digest(text: &str) -> Result<Digest, String> {
    let (hash, size) = text.trim().split_once('/').ok_or_else(|| format!("{:?}: expected HASH/SIZE", crate::quote::quote(text).to_string()))?;
    let size: i64 = size.parse().map_err(|_| "the size after / is not a number".to_string())?;
    Digest::parse(DigestFunction::Sha256, hash, size).map_err(|e| e.to_string())
}

fn digest_text(d: &Digest) -> String {
    format!("{}/{}", d.hash_hex(), d.size)
}

fn action_link(instance: Option<&str>, d: &Digest) -> String {
    let instance = instance.map(|i| format!("instance={}&amp;", url(i))).unwrap_or_default();
    format!("<a href=\"/action?{instance}digest={}\"><code>{}</code></a>", url(&digest_text(d)), esc(&digest_text(d)))
}

fn blob_link(instance: &str, d: &Digest, name: &str) -> String {
    let file = name.rsplit('/').next().unwrap_or(name);
    format!(
        "<a href=\"/blob?instance={}&amp;digest={}&amp;name={}\"><code>{}</code></a>",
        url(instance),
        url(&digest_text(d)),
        url(file),
        esc(&digest_text(d))
    )
}

/// Bytes written, and what they took where the tier compressed them.
fn written(bytes: u64, stored: u64) -> String {
    match stored < bytes {
        true => format!("{} ({} stored)", ByteSize(bytes).human(), ByteSize(stored).human()),
        false => ByteSize(bytes).human(),
    }
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn status(admin: &Admin) -> String {
    let status = admin.status();
    let mut b = String::new();
    let ready = if status.ready { "<span class=\"ok\">ready</span>" } else { "<span class=\"bad\">not ready: storage failing</span>" };
    let _ = write!(b, "<h1>Strata {}</h1><p>up {} · {ready}</p>", esc(&status.version), duration(status.uptime_seconds));
    for i in &status.instances {
        let _ = write!(
            b,
            "<h2>Instance <code>{}</code></h2><p>services: {} · storage <code>{}</code>{}</p>",
            esc(&format!("{:?}", i.name)),
            esc(&i.services.join(", ")),
            esc(&i.storage),
            if i.storage_up { "" } else { " · <span class=\"bad\">storage failing</span>" }
        );
        let _ = write!(
            b,
            "<table><tr><th>hit ratio</th><th>lookups</th></tr><tr><td>action cache</td><td>{}</td></tr>\
             <tr><td>CAS FindMissingBlobs (per digest)</td><td>{}</td></tr><tr><td>CAS reads (per blob)</td><td>{}</td></tr>\
             <tr><td>Remote Asset fetch</td><td>{}</td></tr></table>",
            ratio(i.action_cache.as_ref()),
            ratio(i.cas_find_missing.as_ref()),
            ratio(i.cas_read.as_ref()),
            ratio(i.asset.as_ref())
        );
        b.push_str(
            "<table><tr><th>tier</th><th>role</th><th>kind</th><th>blobs</th><th>held</th><th>written</th><th>hits</th>\
             <th>misses</th><th>evictions</th><th>oldest data</th><th>state</th></tr>",
        );
        for t in &i.tiers {
            let state = match (t.reachable, t.spooled) {
                (false, _) => format!("<span class=\"bad\">unreachable: {}</span>", esc(&t.error)),
                (true, 0) => "ok".to_string(),
                (true, n) => format!("{n} uploads spooled"),
            };
            let oldest = if t.oldest_age_seconds > 0 { duration(t.oldest_age_seconds) } else { "–".into() };
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{oldest}</td><td>{state}</td></tr>",
                esc(&t.name),
                t.role,
                t.kind,
                t.blobs,
                ByteSize(t.bytes).human(),
                written(t.bytes_written, t.stored_bytes_written),
                t.hits,
                t.misses,
                t.evictions
            );
        }
        b.push_str("</table>");
    }
    scheduler_section(admin, &mut b);
    b.push_str(&lookup_form(admin, "", None));
    page("Strata status", &b)
}

fn scheduler_section(admin: &Admin, b: &mut String) {
    let Some(scheduler) = &admin.scheduler else {
        b.push_str("<h2>Execution</h2><p>No instance serves execution.</p>");
        return;
    };
    let snap = scheduler.snapshot();
    let queued: usize = snap.queued.iter().map(|g| g.jobs).sum();
    let _ = write!(b, "<h2>Execution</h2><p>{queued} queued · {} running · {} bots</p>", snap.running.len(), snap.bots.len());
    if !snap.queued.is_empty() {
        b.push_str("<h3>Queue</h3><table><tr><th>instance</th><th>platform</th><th>jobs</th></tr>");
        for g in &snap.queued {
            let platform: Vec<String> = g.platform.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td></tr>", esc(&g.instance), esc(&platform.join(", ")), g.jobs);
        }
        b.push_str("</table>");
    }
    if !snap.running.is_empty() {
        b.push_str("<h3>Running</h3><table><tr><th>action</th><th>instance</th><th>bot</th><th>for</th></tr>");
        for r in &snap.running {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td></tr>",
                action_link(Some(&r.instance), &r.action_digest),
                esc(&r.instance),
                esc(&r.bot_id),
                duration(r.running_for.as_secs())
            );
        }
        b.push_str("</table>");
    }
    b.push_str("<h3>Bots</h3><table><tr><th>bot</th><th>instance</th><th>status</th><th>leases</th><th>properties</th><th>last seen</th></tr>");
    for bot in admin.bots() {
        let props: Vec<String> = bot.properties.iter().map(|p| format!("{}={}", p.name, p.value)).collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"n\">{}/{}</td><td>{}</td><td class=\"n\">{} ago</td></tr>",
            esc(&bot.bot_id),
            esc(&format!("{:?}", bot.instance)),
            esc(&bot.status),
            bot.busy,
            bot.capacity,
            esc(&props.join(", ")),
            duration(bot.last_seen_seconds)
        );
    }
    b.push_str("</table><h3>Recent operations</h3><table><tr><th>operation</th><th>stage</th><th>exit</th><th>action</th></tr>");
    for op in admin.operations(RECENT_OPERATIONS) {
        let digest = op.action_digest.as_ref().and_then(|d| crate::admin::parse(d).ok());
        let link = digest.map(|d| action_link(None, &d)).unwrap_or_default();
        let outcome = match (op.stage.as_str(), op.error.is_empty(), op.cached) {
            ("COMPLETED", false, _) => format!("<span class=\"bad\">{}</span>", esc(&op.error)),
            ("COMPLETED", true, true) => format!("{} (cached)", op.exit_code),
            ("COMPLETED", true, false) => op.exit_code.to_string(),
            _ => String::new(),
        };
        let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td><td>{outcome}</td><td>{link}</td></tr>", esc(&op.name), esc(&op.stage));
    }
    b.push_str("</table>");
}

fn lookup_form(admin: &Admin, digest: &str, instance: Option<&str>) -> String {
    let mut options = String::from("<option value=\"\">(any instance)</option>");
    for i in admin.instances.all().filter(|i| !i.name.is_empty()) {
        let selected = if instance == Some(i.name.as_str()) { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{}\"{selected}>{}</option>", esc(&i.name), esc(&format!("{:?}", i.name)));
    }
    // An empty value searches every instance, "" included.
    format!(
        "<h2>Action browser</h2><form method=\"get\" action=\"/action\">\
         <label>instance <select name=\"instance\">{options}</select></label> \
         <label>action digest <input name=\"digest\" size=\"80\" placeholder=\"HASH/SIZE\" value=\"{}\"></label> \
         <button type=\"submit\">look up</button></form>",
        esc(digest)
    )
}

/// The action page: its Action, Command and cached ActionResult with outputs.
pub async fn action(admin: &Admin, query: &ActionQuery) -> (StatusCode, String) {
    let form = lookup_form(admin, &query.digest, query.instance.as_deref());
    if query.digest.trim().is_empty() {
        return (StatusCode::OK, page("Action browser", &form));
    }
    let digest = match parse_digest(&query.digest) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, page("Action browser", &format!("{form}<p class=\"bad\">{}</p>", esc(&e)))),
    };
    let candidates: Vec<_> = admin
        .instances
        .all()
        .filter(|i| query.instance.as_deref().is_none_or(|n| n.is_empty() || n == i.name))
        .filter_map(|i| Some((i.name.clone(), i.cas.clone().or_else(|| i.execution.as_ref().map(|e| e.1.clone()))?, i.clone())))
        .collect();
    for (name, cas, instance) in candidates {
        let Ok(Some(action)) = crate::tree::load::<reapi::Action>(&cas, &digest, "Action").await else { continue };
        let ac = instance.action_cache.as_ref().or(instance.execution.as_ref()).map(|(store, _)| store.clone());
        let mut b = format!("<h1>Action <code>{}</code></h1><p>instance <code>{}</code></p>", esc(&digest_text(&digest)), esc(&format!("{name:?}")));
        render_action(&mut b, &cas, &name, &action).await;
        let result = match &ac {
            Some(store) => store.get(&digest).await.ok().flatten().and_then(|data| reapi::ActionResult::decode(data).ok()),
            None => None,
        };
        match (result, admin.latest_result(&digest)) {
            (Some(result), _) => {
                b.push_str("<h2>Result</h2><p class=\"muted\">from the action cache</p>");
                render_result(&mut b, &cas, &name, &result).await;
            }
            (None, Some((operation, result))) => {
                let _ = write!(b, "<h2>Result</h2><p class=\"muted\">from operation <code>{}</code> (not in the action cache)</p>", esc(&operation));
                render_result(&mut b, &cas, &name, &result).await;
            }
            (None, None) => b.push_str("<h2>Result</h2><p class=\"muted\">Neither the action cache nor a recent operation holds a result.</p>"),
        }
        b.push_str(&form);
        return (StatusCode::OK, page(&format!("Action {}", digest.hash_hex()), &b));
    }
    let message = format!("{form}<p class=\"bad\">No instance holds the Action {}.</p>", esc(&digest_text(&digest)));
    (StatusCode::NOT_FOUND, page("Action browser", &message))
}

async fn render_action(b: &mut String, cas: &Cas, instance: &str, action: &reapi::Action) {
    let function = DigestFunction::Sha256;
    let digest = |d: &Option<reapi::Digest>| crate::protocol::from_proto(function, d.as_ref(), "digest").ok();
    b.push_str("<h2>Action</h2><table>");
    if let Some(d) = digest(&action.command_digest) {
        let _ = write!(b, "<tr><th>command</th><td>{}</td></tr>", blob_link(instance, &d, "command"));
    }
    if let Some(d) = digest(&action.input_root_digest) {
        let _ = write!(b, "<tr><th>input root</th><td>{}</td></tr>", blob_link(instance, &d, "input_root"));
    }
    let timeout = action.timeout.as_ref().map_or("none".to_string(), |t| format!("{}s", t.seconds));
    let _ = write!(b, "<tr><th>timeout</th><td>{timeout}</td></tr><tr><th>do not cache</th><td>{}</td></tr></table>", action.do_not_cache);
    let command = match digest(&action.command_digest) {
        Some(d) => crate::tree::load::<reapi::Command>(cas, &d, "Command").await.ok().flatten(),
        None => None,
    };
    let Some(command) = command else {
        b.push_str("<p class=\"muted\">The Command is not in the CAS.</p>");
        return;
    };
    let args: Vec<String> = command.arguments.iter().map(|a| esc(a)).collect();
    let _ = write!(b, "<h2>Command</h2><pre>{}</pre><table>", args.join(" "));
    if !command.working_directory.is_empty() {
        let _ = write!(b, "<tr><th>working directory</th><td><code>{}</code></td></tr>", esc(&command.working_directory));
    }
    for v in &command.environment_variables {
        let _ = write!(b, "<tr><th>env <code>{}</code></th><td><code>{}</code></td></tr>", esc(&v.name), esc(&v.value));
    }
    for (name, value) in crate::protocol::action::platform(action, &command) {
        let _ = write!(b, "<tr><th>platform <code>{}</code></th><td><code>{}</code></td></tr>", esc(name), esc(value));
    }
    for path in crate::protocol::action::outputs(&command) {
        let _ = write!(b, "<tr><th>output</th><td><code>{}</code></td></tr>", esc(path));
    }
    b.push_str("</table>");
}

fn seconds_between(from: &Option<Timestamp>, to: &Option<Timestamp>) -> Option<f64> {
    let (from, to) = (from.as_ref()?, to.as_ref()?);
    Some((to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9)
}

async fn render_result(b: &mut String, cas: &Cas, instance: &str, result: &reapi::ActionResult) {
    let class = if result.exit_code == 0 { "ok" } else { "bad" };
    let _ = write!(b, "<p>exit code <span class=\"{class}\">{}</span></p>", result.exit_code);
    if let Some(m) = &result.execution_metadata {
        b.push_str("<table>");
        let _ = write!(b, "<tr><th>worker</th><td>{}</td></tr>", esc(&m.worker));
        let spans = [
            ("queued", &m.queued_timestamp, &m.worker_start_timestamp),
            ("input fetch", &m.input_fetch_start_timestamp, &m.input_fetch_completed_timestamp),
            ("execution", &m.execution_start_timestamp, &m.execution_completed_timestamp),
            ("output upload", &m.output_upload_start_timestamp, &m.output_upload_completed_timestamp),
            ("worker total", &m.worker_start_timestamp, &m.worker_completed_timestamp),
        ];
        for (what, from, to) in spans {
            if let Some(s) = seconds_between(from, to) {
                let _ = write!(b, "<tr><th>{what}</th><td class=\"n\">{:.3} s</td></tr>", s);
            }
        }
        b.push_str("</table>");
    }
    for (name, raw, digest) in [("stdout", &result.stdout_raw, &result.stdout_digest), ("stderr", &result.stderr_raw, &result.stderr_digest)] {
        let _ = write!(b, "<h3>{name}</h3>");
        let digest = crate::protocol::from_proto(DigestFunction::Sha256, digest.as_ref(), name).ok();
        let shown = if !raw.is_empty() {
            Some((bytes::Bytes::copy_from_slice(&raw[..raw.len().min(SHOWN_OUTPUT as usize)]), raw.len() as u64))
        } else if let Some(d) = digest {
            match cas.read(&d, 0, Some(SHOWN_OUTPUT)).await {
                Ok(Some(blob)) => blob.into_bytes().await.ok().map(|bytes| (bytes, d.size)),
                _ => None,
            }
        } else {
            None
        };
        match shown {
            Some((bytes, _)) if bytes.is_empty() => b.push_str("<p class=\"muted\">(empty)</p>"),
            Some((bytes, total)) => {
                let _ = write!(b, "<pre id=\"{name}\">{}</pre>", esc(&String::from_utf8_lossy(&bytes)));
                if total > bytes.len() as u64 {
                    let _ = write!(b, "<p class=\"muted\">first {} of {}", ByteSize(bytes.len() as u64).human(), ByteSize(total).human());
                    if let Some(d) = digest {
                        let _ = write!(b, " · whole: {}", blob_link(instance, &d, name));
                    }
                    b.push_str("</p>");
                }
            }
            None => b.push_str("<p class=\"muted\">(none)</p>"),
        }
    }
    b.push_str("<h3>Output files</h3><table><tr><th>path</th><th>digest</th><th>size</th></tr>");
    for f in &result.output_files {
        if let Ok(d) = crate::protocol::from_proto(DigestFunction::Sha256, f.digest.as_ref(), "file") {
            let exec = if f.is_executable { " (executable)" } else { "" };
            let _ = write!(
                b,
                "<tr><td><code>{}</code>{exec}</td><td>{}</td><td class=\"n\">{}</td></tr>",
                esc(&f.path),
                blob_link(instance, &d, &f.path),
                ByteSize(d.size).human()
            );
        }
    }
    for l in symlinks(result) {
        let _ = write!(b, "<tr><td><code>{}</code></td><td>symlink to <code>{}</code></td><td></td></tr>", esc(&l.path), esc(&l.target));
    }
    b.push_str("</table>");
    for dir in &result.output_directories {
        let _ = write!(b, "<h3>Output directory <code>{}</code></h3>", esc(&dir.path));
        let Ok(tree_digest) = crate::protocol::from_proto(DigestFunction::Sha256, dir.tree_digest.as_ref(), "tree") else { continue };
        match crate::tree::load::<reapi::Tree>(cas, &tree_digest, "Tree").await {
            Ok(Some(tree)) => render_tree(b, instance, &dir.path, &tree),
            _ => b.push_str("<p class=\"muted\">The Tree is not in the CAS.</p>"),
        }
    }
}

#[allow(deprecated)] // REAPI 2.0 results (Strata's bot writes them for Bazel 4) list links by kind.
fn symlinks(result: &reapi::ActionResult) -> impl Iterator<Item = &reapi::OutputSymlink> {
    let by_kind = result.output_file_symlinks.iter().chain(&result.output_directory_symlinks);
    let mut seen = std::collections::HashSet::new();
    result.output_symlinks.iter().chain(by_kind).filter(move |l| seen.insert(l.path.clone()))
}

/// Lists a Tree's files with their paths: children are found by the digest of their encoding.
fn render_tree(b: &mut String, instance: &str, root_path: &str, tree: &reapi::Tree) {
    let function = DigestFunction::Sha256;
    let children: std::collections::HashMap<Digest, &reapi::Directory> =
        tree.children.iter().map(|c| (function.digest_of(&c.encode_to_vec()), c)).collect();
    let mut rows = Vec::new();
    let mut pending: Vec<(String, &reapi::Directory)> = tree.root.iter().map(|r| (root_path.to_string(), r)).collect();
    while let Some((path, dir)) = pending.pop() {
        for f in &dir.files {
            if let Ok(d) = crate::protocol::from_proto(function, f.digest.as_ref(), "file") {
                rows.push((format!("{path}/{}", f.name), d));
            }
        }
        for sub in &dir.directories {
            let child = crate::protocol::from_proto(function, sub.digest.as_ref(), "dir").ok().and_then(|d| children.get(&d).copied());
            if let Some(child) = child {
                pending.push((format!("{path}/{}", sub.name), child));
            }
        }
        if rows.len() > SHOWN_TREE_ENTRIES {
            break;
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    b.push_str("<table><tr><th>path</th><th>digest</th><th>size</th></tr>");
    for (path, d) in rows.iter().take(SHOWN_TREE_ENTRIES) {
        let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td></tr>", esc(path), blob_link(instance, d, path), ByteSize(d.size).human());
    }
    b.push_str("</table>");
    if rows.len() > SHOWN_TREE_ENTRIES {
        let _ = write!(b, "<p class=\"muted\">first {SHOWN_TREE_ENTRIES} entries shown</p>");
    }
}

#[cfg(test)]
mod tests {
    use super::{esc, url};

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<script>alert('x')</script>&\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        assert_eq!(url("a b&c=/\""), "a%20b%26c%3D/%22");
    }
}
