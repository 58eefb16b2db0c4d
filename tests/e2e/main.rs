//! End-to-end tests on a real Docker Engine, a real registry and a real nginx.
//!
//! One binary with its own runner (`harness = false`): the suite builds its
//! images once, runs the tests two at a time, in their listed order after
//! the few that run alone (each in its own compose project, nginx, ports and
//! repository; a panic fails that test only), and always tears down what it
//! started. `TEST_LOG=1` shows the containers' logs.
//!
//! The runner reads libtest's command line ([`runner::Args`]):
//! `cargo test --test e2e -- NAME...` runs the tests whose name contains any
//! NAME, `--skip NAME` leaves some out, `--exact` matches whole names, `--list`
//! prints the selection, `--fail-fast` stops at the first failure,
//! `--test-threads N` runs N at once (1: one after the other), `--quick`
//! only the quick tier ([`runner::QUICK`], `scripts/test.sh quick`); the other
//! libtest flags (`--nocapture`, `--quiet`, `--format F`, ...) are accepted
//! and change nothing, and an unknown flag is an error.
//!
//! Each test ends passed, failed or skipped: a test that cannot run here
//! returns [`runner::Skip`] with its reason, printed with its result and
//! again before the closing line, which is `N passed, N failed, N skipped`
//! alone on its line (CI reads it; with `CI=true` each skip is also a
//! warning annotation). Each test has a time limit ([`runner::time_limit`]):
//! past it, it fails with what it was waiting for (the harness records its
//! polls and commands), and every docker command the harness runs has one
//! of its own ([`harness::DOCKER_LIMIT`]). A run starts by removing what
//! killed runs left: containers, networks, volumes, images, a swarm,
//! registry processes and scratch directories ([`Suite::remove_leftovers`]).
//!
//! A filter or skip that selects no e2e test fails the run before anything is
//! built, with a message saying so. `cargo test -- NAME` (and
//! `scripts/test.sh -- NAME`) passes NAME to the unit-test binaries too; they
//! run what matches and pass, then this runner fails if NAME matches no e2e
//! test. So a NAME that matches nothing anywhere fails, and so does one that
//! matches only unit tests: run those with `cargo test --lib NAME`, which
//! leaves this binary out. Failing is the choice because this runner cannot
//! see what the other binaries ran, and a green run must mean the filter hit.

mod apps;
mod bake;
mod bridge;
mod checks;
mod ci;
mod companion;
mod cycle;
mod faults;
mod guard;
mod harness;
mod hold;
mod input;
mod leftovers;
mod load;
mod pause;
mod proxy;
mod restarts;
mod retention;
mod runner;
mod signatures;
mod sse;
mod swaps;
mod swarm;
mod switch;
mod token_front;
mod traffic;
mod unattended;
mod versions;
mod watching;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use harness::Suite;
use runner::{Args, Verdict};

/// How many tests run at once unless `--test-threads N` says otherwise: each
/// has its own compose project, nginx, ports and repository, and most of a
/// test's time is spent waiting on containers.
const DEFAULT_JOBS: usize = 2;

/// Tests that run with no other beside them: image retention counts the
/// images any container on the machine uses, and the other tests' instances
/// use the suite's images; every companion on the Engine watches every
/// container labelled `selfup.watch`, so another test's companion would
/// update the watch tests' containers too (and their own, each other's);
/// the Swarm test puts the whole Engine in a swarm and takes it out again,
/// which other tests' containers and networks must not live through.
const ALONE: [&str; 5] = [
    "retention::five_upgrades_leave_three_images_of_the_repository_and_rollback_still_works",
    "swarm::a_two_replica_service_upgrades_under_load_without_a_failed_request_and_swarm_rolls_back_a_failing_image",
    "unattended::a_labelled_companion_container_follows_its_policy_and_a_tag_outside_it_is_left_alone",
    "unattended::a_registry_push_notification_updates_a_labelled_companion_container_at_once",
    "apps::a_watched_app_is_handed_over_blue_green_by_the_watch_without_a_failed_request",
];

/// A test: its future ends with the reason it skipped, if it did
/// ([`runner::Outcome`]); a panic fails it.
/// Tests that change the Docker Engine for every container on it (a swarm
/// init and leave reconfigures its networking: every bridge network's
/// connections hang for seconds): they hold the machine's Engine lock alone,
/// so that no test of any run on the machine runs beside them
/// ([`harness::engine_lock`]); every other test holds it shared.
const ENGINE_WIDE: [&str; 1] =
    ["swarm::a_two_replica_service_upgrades_under_load_without_a_failed_request_and_swarm_rolls_back_a_failing_image"];

type Test = fn(Arc<Suite>) -> Pin<Box<dyn Future<Output = Option<String>> + Send>>;

macro_rules! tests {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((concat!(stringify!($module), "::", stringify!($name)), (|s| Box::pin(async move { runner::Outcome::skipped($module::$name(s).await) })) as Test)),*]
    };
}

fn main() -> ExitCode {
    let all: Vec<(&str, Test)> = tests![
        cycle::build_refuses_a_version_that_is_not_semver,
        cycle::three_upgrades_toggle_the_port_and_leave_one_compose_container,
        cycle::three_upgrades_toggle_the_port_and_leave_one_compose_container_with_the_shipped_settings,
        cycle::upgrading_to_the_running_version_does_nothing,
        cycle::a_successor_that_exits_at_once_is_removed_and_the_elder_keeps_serving,
        cycle::a_successor_that_never_answers_health_is_removed_and_the_elder_keeps_serving,
        proxy::stopping_nginx_lets_a_request_in_flight_finish,
        traffic::no_request_is_lost_through_nginx_across_consecutive_upgrades,
        traffic::no_request_is_lost_through_nginx_across_consecutive_upgrades_with_the_shipped_settings,
        switch::eight_keep_alive_clients_see_no_failure_across_five_upgrades,
        switch::a_slow_public_post_gets_its_answer_while_upgrades_run_in_their_usual_time,
        switch::a_foreign_listener_on_the_idle_port_or_in_the_socket_directory_receives_nothing,
        pause::a_five_second_pause_under_eight_keep_alive_clients_fails_none_and_the_held_requests_are_answered_within_100_ms_of_the_resume,
        pause::a_pause_ends_by_itself_after_hold_secs_and_nginx_refuses_it_from_the_public_side,
        hold::a_sigkill_of_the_live_process_under_eight_keep_alive_clients_fails_only_posts_in_flight_in_it_at_most_one_per_client,
        hold::a_docker_restart_of_the_live_container_under_eight_keep_alive_clients_fails_none,
        hold::the_hold_takes_the_image_of_the_live_version_after_an_upgrade_and_holds_while_nothing_is_live,
        traffic::nginx_refuses_control_endpoints_and_a_token_guards_upgrade,
        guard::browser_requests_are_refused_on_every_control_endpoint_while_curl_upgrades,
        guard::a_registry_that_redirects_links_elsewhere_or_floods_gets_a_bounded_502_and_nothing_changes,
        guard::the_setup_registry_refuses_anonymous_reads_and_pushes_selfup_upgrades_through_its_credentials_on_its_socket_and_its_door_holds_the_port,
        guard::secrets_go_to_a_control_socket_that_follows_the_live_instance_and_never_to_a_freed_port,
        guard::a_user_holding_the_idle_port_gets_a_409_naming_it_and_the_upgrade_works_once_it_is_free,
        guard::a_flood_of_public_health_during_a_bake_is_not_judged_and_pings_the_daemon_once_a_second,
        signatures::a_registry_a_local_user_stands_in_with_runs_nothing_unsigned_or_signed_by_another_key,
        signatures::a_companion_update_runs_only_images_signed_with_the_key_the_container_names,
        guard::the_companion_key_cannot_move_a_container_to_another_repository_of_an_allowed_registry,
        guard::a_local_user_is_refused_every_control_endpoint_over_loopback_while_roots_curl_upgrades,
        guard::the_metrics_token_reads_metrics_and_opens_no_control_endpoint,
        guard::the_cli_sends_its_token_to_a_port_only_when_the_url_names_it,
        guard::nginx_refuses_paths_that_normalize_elsewhere_and_selfup_sees_none_of_them,
        guard::the_registry_hook_is_refused_on_the_live_socket_even_with_its_token,
        guard::the_registry_setup_puts_no_password_on_a_command_line,
        versions::a_requirement_picks_the_highest_matching_version_and_going_lower_needs_an_exact_one,
        versions::rollback_returns_to_the_version_before_the_last_upgrade,
        versions::tags_are_read_across_every_page_of_the_registry,
        retention::five_upgrades_leave_three_images_of_the_repository_and_rollback_still_works,
        faults::a_successor_that_reports_another_version_is_removed,
        faults::an_unreachable_registry_or_a_missing_tag_changes_nothing,
        faults::an_unreachable_docker_daemon_is_a_503_and_nothing_else,
        faults::the_successor_takes_over_when_the_elder_is_killed_after_starting_it,
        faults::the_elder_reclaims_the_live_socket_when_the_successor_dies_after_the_switch,
        faults::twenty_concurrent_upgrade_requests_run_exactly_one_upgrade,
        faults::an_instance_that_finds_siblings_of_a_half_finished_upgrade_converges_to_one,
        bake::a_successor_that_crashes_five_seconds_after_the_switch_hands_the_traffic_back_to_the_warm_elder,
        bake::a_successor_that_hangs_during_the_bake_is_removed_and_the_elder_serves_again,
        bake::a_successor_that_answers_5xx_during_the_bake_is_rolled_back,
        bake::promote_ends_the_bake_early_and_a_second_upgrade_during_it_gets_409_naming_it,
        bake::rollback_during_the_bake_is_instant_and_loses_no_request,
        bake::a_kill_of_either_instance_during_the_bake_leaves_the_other_live_and_alone,
        bake::a_restart_of_either_instance_during_the_bake_converges_to_one,
        bake::every_version_rolled_back_during_a_bake_stays_refused_to_latest_until_it_is_named,
        restarts::a_restarted_live_instance_is_a_plain_start_and_the_next_upgrade_works,
        restarts::the_elder_killed_while_its_successor_starts_leaves_one_instance_of_the_new_version,
        restarts::the_elder_restarted_while_its_successor_starts_leaves_one_instance_of_the_new_version,
        restarts::daemon_errors_while_the_successor_watches_its_elder_do_not_make_it_take_over_early,
        restarts::an_upgrade_with_nginx_stopped_completes_and_nginx_serves_it_when_started,
        restarts::an_elder_stopped_by_someone_else_mid_takeover_does_not_answer_upgraded,
        checks::a_tag_whose_label_does_not_satisfy_the_requirement_is_refused_and_nothing_changes,
        unattended::a_dry_run_answers_what_an_upgrade_would_do_and_changes_nothing,
        unattended::a_tag_pushed_while_watching_is_upgraded_to_without_any_request_and_reported,
        unattended::notify_mode_reports_a_newer_version_once_and_changes_nothing,
        unattended::a_failed_target_is_not_tried_again_and_a_young_one_waits_for_the_cooldown,
        unattended::a_push_to_the_registry_upgrades_through_its_notification_without_any_request,
        unattended::only_the_live_instance_watches_and_an_elder_that_hands_over_stops_watching,
        unattended::an_elder_waits_at_most_five_seconds_for_a_report_that_hangs,
        checks::a_stray_listener_on_the_successor_port_gets_no_handover_secret,
        input::malformed_and_random_requests_get_a_json_4xx_and_the_service_keeps_serving,
        companion::an_update_keeps_every_setting_of_the_container_and_answers_with_both_images,
        companion::a_container_without_published_ports_is_replaced_beside_the_old_one_and_one_update_runs_at_a_time,
        companion::a_new_image_that_exits_at_once_is_rolled_back_and_the_old_container_runs_again,
        companion::a_new_image_that_fails_its_healthcheck_is_rolled_back_while_the_old_container_keeps_running,
        companion::a_new_container_that_dies_during_the_bake_gives_way_at_once_to_the_old_one_which_never_stopped,
        companion::requests_without_the_right_key_are_refused_with_401_and_no_detail,
        companion::unlabelled_containers_and_unlisted_registries_are_refused_with_403,
        companion::bad_requests_get_a_4xx_with_a_json_error_that_says_what_was_wrong,
        companion::an_update_pulls_through_a_password_protected_registry_with_config_json_credentials,
        companion::an_update_resolves_its_requirement_on_a_registry_that_wants_a_bearer_token,
        companion::a_generated_api_key_is_stored_with_mode_0600_logged_once_and_kept_across_restarts,
        apps::a_plain_web_app_is_handed_over_three_times_under_load_through_nginx_without_a_failed_request,
        apps::an_app_that_ignores_sigterm_gets_its_update_answer_within_2_s_of_the_switch_and_a_later_update_waits_for_its_elder_to_stop,
        apps::an_app_paused_for_five_seconds_under_eight_keep_alive_clients_fails_none_and_its_held_requests_go_on_within_100_ms_of_the_resume,
        apps::an_app_whose_container_crashes_has_its_new_requests_held_until_its_restart_policy_brings_it_back,
        apps::an_app_whose_successor_fails_its_health_check_keeps_the_elder_serving_and_the_answer_says_why,
        apps::a_published_port_app_whose_successor_cannot_bind_is_refused_and_nothing_stops,
        apps::an_app_bake_that_passes_keeps_the_elder_warm_until_its_end_and_a_watcher_of_events_sees_every_step,
        apps::an_app_successor_that_turns_sick_during_the_bake_gives_the_traffic_back_to_the_elder_without_a_failed_request,
        apps::an_operator_promotes_an_app_bake_early_or_rolls_it_back_to_the_elder_without_a_failed_request,
        apps::an_app_successor_that_crashes_during_the_bake_gives_the_traffic_back_to_the_elder_at_most_one_failure_per_client,
        apps::an_app_started_after_selfup_is_reachable_through_its_socket_at_once_and_followed_when_recreated,
        apps::a_watched_app_is_handed_over_blue_green_by_the_watch_without_a_failed_request,
        apps::an_app_keeps_every_request_through_a_self_upgrade_of_selfup_even_one_longer_than_the_linger,
        swaps::an_update_in_flight_while_upgrade_runs_both_end_well_one_instance_no_stray_container,
        swaps::an_instance_that_starts_resolves_a_swap_left_half_done_rolling_back_or_finishing,
        swaps::a_second_instance_gets_409_for_a_container_whose_swap_runs_in_the_first,
        ci::a_ci_job_updates_a_container_through_nginx_and_the_update_socket_before_and_after_selfup_upgrades_itself,
        leftovers::a_run_removes_what_dead_runs_left_and_nothing_of_a_live_run,
        load::a_dropped_load_stops_its_clients_and_closes_their_connections,
        runner::the_runner_reads_libtest_flags_and_fails_when_a_filter_selects_nothing,
        watching::an_upgrade_streams_every_step_in_order_and_the_successor_resumes_after_the_last_event_id,
        watching::pull_progress_events_carry_growing_byte_counts_for_an_image_with_a_large_layer,
        watching::the_cli_upgrades_step_by_step_and_answers_with_exit_codes_and_json,
        watching::metrics_parse_and_count_a_failed_upgrade_behind_the_token,
        bridge::two_upgrades_on_a_bridge_network_under_load_through_nginx_lose_no_request_and_leave_one_container,
        bridge::on_a_bridge_network_selfup_reads_the_shipped_registry_at_its_socket_and_upgrades_to_a_requirement,
        bridge::two_upgrades_on_a_bridge_network_under_load_through_nginx_lose_no_request_and_leave_one_container_with_the_shipped_settings,
        bridge::an_app_updates_a_labelled_sibling_through_the_companion_by_name_with_nothing_published,
        bridge::the_companion_upgrades_itself_while_the_app_keeps_reaching_it_by_name,
        bridge::the_companion_upgrades_itself_with_the_bake_off_while_the_app_keeps_reaching_it_by_name,
        watching::a_companion_update_streams_every_step_in_order_with_its_pull_progress_and_its_rollback,
        unattended::a_labelled_companion_container_follows_its_policy_and_a_tag_outside_it_is_left_alone,
        unattended::a_registry_push_notification_updates_a_labelled_companion_container_at_once,
        swarm::a_two_replica_service_upgrades_under_load_without_a_failed_request_and_swarm_rolls_back_a_failing_image,
    ];
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("e2e: {e}\n{}", runner::USAGE);
            return ExitCode::FAILURE;
        }
    };
    if args.help {
        println!("{}", runner::USAGE);
        return ExitCode::SUCCESS;
    }
    let mut selected: Vec<_> = all.into_iter().filter(|(n, _)| args.selects(n)).collect();
    // The tests that run alone go first, before a long test holds a slot.
    selected.sort_by_key(|(name, _)| !ALONE.contains(name));
    if selected.is_empty() && args.narrows() {
        eprintln!(
            "e2e: no e2e test matches the filters {:?}{}{}; `--list` shows the names (unit tests run with `cargo test --lib NAME`)",
            args.filters,
            if args.skip.is_empty() {
                String::new()
            } else {
                format!(" with --skip {:?}", args.skip)
            },
            if args.exact { " (--exact)" } else { "" },
        );
        return ExitCode::FAILURE;
    }
    if let Some(n) = args.repeat {
        selected = selected.iter().flat_map(|t| std::iter::repeat_n(*t, n)).collect();
    }
    if args.list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        // `--ignored`: the suite has no ignored tests.
        println!("{}", runner::summary(0, 0, 0));
        return ExitCode::SUCCESS;
    }

    // Every process the run starts carries its id: a later run kills what
    // this one leaves if it is killed (`Suite::remove_leftovers`).
    // SAFETY: no other thread runs yet; the runtime is built below.
    unsafe { std::env::set_var(harness::RUN_VARIABLE, harness::this_run_id()) };
    let jobs = args.jobs.unwrap_or(DEFAULT_JOBS);
    // Tests make blocking calls (docker, docker-compose) from async code; with
    // several tests at once, spare workers keep the load generators running.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4 + 4 * jobs)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    // The quick tier's tests need no fault switch: its build (a whole
    // compile of the library with LTO) is left out.
    let suite = match Suite::start(!args.quick) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("e2e: the suite could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "e2e: suite ready in {:.1}s; running {} tests, {jobs} at a time",
        started.elapsed().as_secs_f64(),
        selected.len()
    );
    let verdicts = runtime.block_on(run_all(suite.clone(), selected, jobs, args.fail_fast));
    drop(runtime);
    drop(suite);
    eprintln!("e2e: {:.1}s in all", started.elapsed().as_secs_f64());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, verdict) in &verdicts {
        match verdict {
            Verdict::Passed => passed += 1,
            Verdict::Skipped(reason) => {
                skipped += 1;
                println!("skipped: {name}: {reason}");
            }
            Verdict::Failed(_) => {
                failed += 1;
                println!("failed: {name}");
            }
        }
    }
    if skipped > 0 && std::env::var("CI").is_ok_and(|v| v == "true") {
        // A CI log's reader sees the skips apart from the passes.
        for (name, verdict) in &verdicts {
            if let Verdict::Skipped(reason) = verdict {
                println!("::warning title=e2e test skipped::{name}: {reason}");
            }
        }
    }
    println!("{}", runner::summary(passed, failed, skipped));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `selected` in order, `jobs` at a time, each within its time limit
/// ([`runner::time_limit`]); prints each result as it ends, and returns them
/// in the order they ended. With `fail_fast`, no test starts after a failure.
async fn run_all(
    suite: Arc<Suite>,
    selected: Vec<(&'static str, Test)>,
    jobs: usize,
    fail_fast: bool,
) -> Vec<(&'static str, Verdict)> {
    let slots = Arc::new(tokio::sync::Semaphore::new(jobs));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut running = tokio::task::JoinSet::new();
    for (name, test) in selected {
        // FIFO: tests start in the order they are listed; a test in ALONE
        // waits for every other to end, and holds every slot.
        let wanted = if ALONE.contains(&name) { jobs as u32 } else { 1 };
        let slot = slots
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the semaphore is never closed");
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let (suite, stop) = (suite.clone(), stop.clone());
        running.spawn(async move {
            let t = Instant::now();
            let verdict = run_one(name, test, suite).await;
            let took = t.elapsed().as_secs_f64();
            match &verdict {
                Verdict::Passed => println!("test {name} ... ok ({took:.1}s)"),
                Verdict::Skipped(reason) => println!("test {name} ... skipped ({took:.1}s): {reason}"),
                Verdict::Failed(why) => {
                    println!("test {name} ... FAILED ({took:.1}s): {why}");
                    if fail_fast {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
            drop(slot);
            (name, verdict)
        });
    }
    let mut verdicts = Vec::new();
    while let Some(done) = running.join_next().await {
        match done {
            Ok(verdict) => verdicts.push(verdict),
            Err(e) => panic!("a test's runner task failed: {e}"),
        }
    }
    verdicts
}

/// Runs one test on a task of its own: a panic fails it, and so does its
/// time limit, with what it was waiting for then. A test out of time is
/// cancelled: its environments' guards drop and remove what it made.
async fn run_one(name: &'static str, test: Test, suite: Arc<Suite>) -> Verdict {
    let exclusive = ENGINE_WIDE.contains(&name);
    let engine = match tokio::task::spawn_blocking(move || harness::engine_lock(exclusive)).await {
        Ok(Ok(lock)) => lock,
        Ok(Err(e)) => return Verdict::Failed(format!("taking the Engine lock: {e}")),
        Err(e) => return Verdict::Failed(format!("taking the Engine lock: {e}")),
    };
    let verdict = run_within_limit(name, test, suite).await;
    drop(engine);
    verdict
}

/// [`run_one`] once the Engine lock is held.
async fn run_within_limit(name: &'static str, test: Test, suite: Arc<Suite>) -> Verdict {
    let waits = harness::Waits::default();
    let limit = runner::time_limit(name);
    let scoped = waits.clone();
    let mut task = tokio::spawn(async move { scoped.scope(test(suite)).await });
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(None)) => Verdict::Passed,
        Ok(Ok(Some(reason))) => Verdict::Skipped(reason),
        Ok(Err(e)) => Verdict::Failed(e.to_string()),
        Err(_) => {
            let waiting = waits
                .describe()
                .unwrap_or_else(|| "nothing the harness records (a check between two waits)".into());
            waits.expire();
            task.abort();
            // The cancelled test's guards clean up as it drops.
            let _ = task.await;
            Verdict::Failed(format!(
                "ran out of its time limit of {limit:?} while waiting for: {waiting}"
            ))
        }
    }
}
