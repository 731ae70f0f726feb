"""The run machinery: everything a run needs to survive a kill, a preemption, a bad disk or
another host, kept apart from the research code (train.py, inner.py, losses.py, methods/).

  workdir.py        one run per workdir (the lock), its identity, what a resume may change
  checkpointing.py  orbax checkpoints with digests, quarantine of unreadable ones, exports
  preemption.py     SIGTERM/SIGINT -> a checkpoint at the next step, exit 75
  provenance.py     one record per (re)start: config, versions, devices, git commit
  fs.py             every workdir file (local or gs://), the lock object on a bucket
  metrics.py        metrics.jsonl (+ TensorBoard), rewritten from a checkpoint on resume
  sharding.py       the device mesh, batch and parameter placement
  distributed.py    jax.distributed.initialize for multi-process runs
  loop.py           the train loop's plumbing: `itstime`, the metrics queue, the managers
  lifeline.py       a dead process ends the other processes of a run at once (exit 75)
  host_memory.py    the command line restarts once with malloc on transparent huge pages

The resume promise (README, "What is promised") rests on these invariants; each has the
tests that pin it:

1. A resumed run computes what an uninterrupted one does: the per-step key is
   fold_in(key, step), the source batches are indexed by step, and a checkpoint holds the
   whole TrainState (params, optimizer state, model selection's best).
   tests/test_reliability.py::test_kill9_at_two_points_then_rerun_equals_uninterrupted_run,
   ::test_sigterm_saves_a_checkpoint_exits_75_and_resumes, tests/test_train.py::
   test_resume_matches_uninterrupted_run, tests/test_gcs.py::
   test_a_gs_workdir_preempted_and_resumed_ends_bitwise_like_a_local_run,
   tests/test_scale.py::test_checkpoint_from_2_devices_restores_on_1_and_4,
   tests/test_streamed_resume.py::test_index_source_resumes_exactly_in_the_uninterrupted_stream.
2. What `save` writes beside the state (train.py: the config, every metrics record, the
   anchor's digest, the loss window, the process count) is what a resume reads back:
   metrics.jsonl is rewritten from it, the logged loss mean continues the window, another
   config or anchor is refused. tests/test_workdir.py::test_the_identity_is_inside_the_checkpoints,
   ::test_a_damaged_metrics_file_is_repaired_from_the_checkpoint,
   ::test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_records,
   ::test_the_l2sp_anchor_cannot_change_on_resume, tests/test_train.py::
   test_train_records_the_process_count_and_checks_it_on_resume.
3. At a sync point the order is drain, log, evaluate, save, stop (train.py's loop): a
   non-finite step raises in `MetricsQueue.drain` before anything of its window is logged or
   saved. tests/test_train.py::test_nan_stops_naming_the_step_and_keeps_last_checkpoint,
   tests/test_reliability.py::test_nan_at_the_cli_is_one_line_exit_3_and_keeps_checkpoints.
4. The host runs at most `loop.MAX_IN_FLIGHT` steps ahead of the device, and a preemption is
   agreed on by every process at a sync point, so a stop lands within ~2 steps, on the same
   step everywhere.
   tests/test_reliability.py::test_the_host_runs_at_most_two_steps_ahead_of_the_device,
   ::test_sigterm_flag_is_checked_once_per_step, tests/test_scale.py::
   test_sigterm_to_one_process_stops_both_at_one_step_with_a_checkpoint.
5. A resume may change only the keys declared `resume=True` in merlin_jax/keys.py.
   tests/test_train.py::test_resume_refuses_a_different_config, tests/test_workdir.py::
   test_total_steps_of_a_decaying_schedule_cannot_change_on_resume.
6. One run per workdir, for the whole run (a two-stage method's pre-training is a run of its
   own in WORKDIR/pretrain, with its own lock). tests/test_workdir.py::
   test_a_held_workdir_is_refused_with_its_owner_and_freed_when_the_holder_ends,
   tests/test_reliability.py::
   test_two_runs_on_one_workdir_one_is_refused_and_a_killed_holder_frees_it,
   tests/test_gcs.py::test_the_lock_object_refuses_a_second_run_and_a_stale_one_is_taken_over.
7. Every committed checkpoint has a digest; one that fails it, or fails to read, is moved
   aside and the run resumes from the previous one. tests/test_reliability.py::
   test_corrupt_latest_checkpoint_falls_back_and_is_moved_aside,
   ::test_all_checkpoints_unreadable_is_one_error_and_moves_nothing, tests/test_workdir.py::
   test_deleting_the_digest_file_does_not_disable_the_checksum.
"""
