"""The site's pre-spawn and post-stop hooks, built from hubstock's pieces.

hubstock's hook pins every server to the published generation (server command,
PATH, JUPYTER_PATH, JUPYTER_CONFIG_PATH), registers the session for `hubstock gc`
and writes the audit record. Add site-specific steps after it.
"""

from hubstock.hooks import post_stop_hook, pre_spawn_hook


def make_hooks(site):
    """Return this site's (pre_spawn, post_stop) hooks; `site` is the loaded hubstock site."""

    def pre_spawn(spawner):
        pre_spawn_hook(spawner, site.root)
        # Site-specific additions go here, for example:
        # spawner.environment["OMP_NUM_THREADS"] = "1"

    def post_stop(spawner):
        post_stop_hook(spawner, site.root)

    return pre_spawn, post_stop
