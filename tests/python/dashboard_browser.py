#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

Run by `tests/browser.rs` against a `circle demo` it started (PostgreSQL or the
embedded store); it can be run by hand against any demo practice:

    python3 tests/python/dashboard_browser.py --base http://127.0.0.1:8080 \
        --admin-token ADMIN --clinician-token TOKEN [--screenshots target/screenshots]

The demo's dr-chen facilitates the Friday recovery group (open, PHQ-9, members
active today); dr-okafor's Tuesday group is another clinician's. The script signs in
with a token, reads the caseload, opens a member's chart, schedules a session and
records its attendance (with the keyboard alone) and a PHQ-9 through the forms,
watches the group page and the caseload update in other tabs without a reload
(Server-Sent Events), checks the CSRF refusal, the 403 page and the print stylesheet,
and on every page: no console error or failed request, no serious or critical
axe-core violation, every form field labelled; each page is photographed at
1280x900 and at 390 px wide. A second browser with JavaScript off then signs in,
marks a risk item reviewed and records attendance: only live updates need scripts.

It never downloads a browser: Playwright launches /usr/bin/chromium. Prints one
line per check and exits 1 listing every failure.
"""

import argparse
import datetime
import pathlib
import re
import shutil
import sys
import tempfile
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = pathlib.Path(__file__).parent / "vendor" / "axe-core-4.14.1.min.js"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

GROUP = "grp-recovery-fri"
CLINICIAN = "dr-chen"
OTHER_GROUP = "grp-anxiety-tue"  # dr-okafor's
OTHER_MEMBER = "cli-01"  # a member of dr-okafor's group only
# A live update reaches an open page within this (the issue asks 1 s for a risk
# alert; the margin is for a 2-core machine running other tests).
LIVE_WITHIN_MS = 3000

# Every form field's accessible name: a <label for>, a wrapping label,
# aria-labelledby naming elements that exist, or aria-label.
UNLABELLED_FIELDS_JS = """
() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden')
  .filter(el => {
    if (el.getAttribute('aria-label')) return false;
    const by = el.getAttribute('aria-labelledby');
    if (by && by.split(/\\s+/).every(id => document.getElementById(id))) return false;
    if (el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`)) return false;
    if (el.closest('label')) return false;
    return true;
  })
  .map(el => el.outerHTML.slice(0, 120))
"""

# Tables wider than their card on a phone (the card scrolls sideways).
WIDE_TABLES_JS = """
() => [...document.querySelectorAll('main table')]
  .filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)
  .map(t => (t.closest('section')?.querySelector('h2, h3')?.textContent
             || document.querySelector('h1').textContent) + ` (${t.scrollWidth} px)`)
"""

AXE_JS = """
async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ')),
  }));
}
"""


class Run:
    """The checks' outcome, and what the browser reported while they ran."""

    def __init__(self, label, screenshots, axe):
        self.label = label
        self.axe = axe
        self.screenshots = screenshots
        self.failures = []
        self.expected = []  # (status, path) of the refusals the script provokes
        self.started = time.monotonic()
        self.spent = {"axe-core": 0.0, "screenshots": 0.0}

    def ok(self, what):
        print(f"ok    {time.monotonic() - self.started:5.1f}s  {what}", flush=True)

    def fail(self, what):
        print(f"FAIL  {time.monotonic() - self.started:5.1f}s  {what}", flush=True)
        self.failures.append(what)

    def check(self, condition, what):
        (self.ok if condition else self.fail)(what)
        return condition

    def provoked(self, status, url):
        return any(status == s and url.endswith(path) for s, path in self.expected)

    # Browser events, for every page of the context.
    def on_console(self, message):
        # Chromium logs every 4xx document as an error: the provoked refusals are not.
        provoked = re.match(r"Failed to load resource: the server responded with a status of (\d+)",
                            message.text)
        if provoked and self.provoked(int(provoked.group(1)), message.location.get("url", "")):
            return
        if message.type == "error":
            self.fail(f"console error on {message.page.url if message.page else '?'}: {message.text}")

    def on_page_error(self, error):
        self.fail(f"uncaught script error: {error.error}")

    def on_request_failed(self, request):
        failure = request.failure or ""
        # Leaving a live page closes its event stream: the browser reports the
        # stream's request as aborted. That is the stream ending, not a failure.
        if request.url.endswith("/app/events") and "ERR_ABORTED" in failure:
            return
        self.fail(f"request failed: {request.method} {request.url}: {failure}")

    def on_response(self, response):
        if response.status < 400:
            return
        if self.provoked(response.status, response.url):
            return
        self.fail(f"HTTP {response.status} for {response.request.method} {response.url}")


def check_page(run, page, name):
    """The checks every page gets, and its two screenshots."""
    page.wait_for_load_state("load")
    unlabelled = page.evaluate(UNLABELLED_FIELDS_JS)
    run.check(not unlabelled, f"{name}: every form field has a label {unlabelled or ''}")
    if run.axe:
        started = time.monotonic()
        axe_check(run, page, name)
        run.spent["axe-core"] += time.monotonic() - started
    if run.screenshots:
        started = time.monotonic()
        photograph(run, page, name)
        run.spent["screenshots"] += time.monotonic() - started


def axe_check(run, page, name):
    # axe-core is in every page of the context from the start (an init script, which
    # the pages' Content-Security-Policy does not govern; a <script> tag it would).
    violations = page.evaluate(AXE_JS)
    serious = [v for v in violations if v["impact"] in ("serious", "critical")]
    for v in violations:
        if v not in serious:
            print(f"note  {name}: axe {v['impact']} {v['id']}: {v['help']} at {v['nodes']}")
    run.check(
        not serious,
        f"{name}: axe-core finds no serious or critical violation "
        + "; ".join(f"{v['impact']} {v['id']} ({v['help']}) at {v['nodes']}" for v in serious),
    )


def photograph(run, page, name):
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        path = run.screenshots / f"{run.label}-{name}-{size}.png"
        page.screenshot(path=str(path), full_page=True)
        if size == "phone":
            width = page.evaluate("() => document.documentElement.scrollWidth")
            if width > viewport["width"]:
                print(f"note  {name}: on a phone the page is {width} px wide (scrolls sideways)")
            wide = page.evaluate(WIDE_TABLES_JS)
            if wide:
                print(f"note  {name}: on a phone these tables scroll sideways in their card: {wide}")
    page.set_viewport_size(DESKTOP)


def print_view(run, page, name):
    """The print stylesheet: the page without its forms and navigation."""
    page.emulate_media(media="print")
    shown = page.evaluate(
        "() => [...document.querySelectorAll('form, .no-print, header.top nav')]"
        ".filter(el => el.getClientRects().length > 0).length"
    )
    run.check(shown == 0, f"{name}: printed, the page hides its forms and navigation ({shown} shown)")
    if run.screenshots:
        page.screenshot(path=str(run.screenshots / f"{run.label}-{name}-print.png"), full_page=True)
    page.emulate_media(media="screen")


def sign_in(run, page, base, token, home, check=True):
    page.goto(f"{base}/app/sign-in")
    if check:
        check_page(run, page, "sign-in")
    page.fill("#token", token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}{home}")
    run.ok(f"signed in with a token, landed on {home}")


def no_reload_marker(page):
    """A value that lives only as long as the document: a reload would lose it."""
    page.evaluate("() => { window.circleNoReload = 'still here' }")


def still_same_document(page):
    return page.evaluate("() => window.circleNoReload") == "still here"


def wait_live(page):
    """Waits until htmx's event stream is open, so the next write reaches the page."""
    page.wait_for_function(
        "() => { const s = document.body['htmx-internal-data']; "
        "return s && s.sseEventSource && s.sseEventSource.readyState === 1 }",
        timeout=10_000,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--clinician-token", required=True, help=f"a token of {CLINICIAN}")
    parser.add_argument("--screenshots", type=pathlib.Path,
                        help="where to photograph every page (none without it)")
    parser.add_argument("--label", default="demo", help="prefix of the screenshot files")
    parser.add_argument("--second-store", action="store_true",
                        help="the same pages on another store: only the checks that touch the "
                             "store (sign-in, reads, the forms' writes, live updates); axe-core, "
                             "CSRF, 403, the admin's pages and JavaScript-off are the first run's")
    args = parser.parse_args()
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    run = Run(args.label, args.screenshots, axe=not args.second_store)
    base = args.base.rstrip("/")
    with sync_playwright() as playwright:
        for name, flow, options in (
            ("with JavaScript", scenario, {}),
            ("without JavaScript", without_javascript, {"java_script_enabled": False}),
        ):
            if args.second_store and flow is without_javascript:
                continue
            # Each browser with a fresh profile of its own, removed after.
            profile = tempfile.mkdtemp(prefix="circle-chromium-")
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=DESKTOP,
                **options,
            )
            context.set_default_timeout(10_000)
            if run.axe and flow is scenario:
                context.add_init_script(path=str(AXE))
            context.on("console", run.on_console)
            context.on("weberror", run.on_page_error)
            context.on("requestfailed", run.on_request_failed)
            context.on("response", run.on_response)
            try:
                flow(run, context, base, args)
            except (PlaywrightError, AssertionError) as error:
                run.fail(f"stopped ({name}): {error}")
            finally:
                context.close()
                shutil.rmtree(profile, ignore_errors=True)
    elapsed = time.monotonic() - run.started
    if run.failures:
        print(f"\n{len(run.failures)} failed ({elapsed:.1f} s):")
        for failure in run.failures:
            print(f"  - {failure}")
        sys.exit(1)
    spent = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in run.spent.items())
    print(f"\nall browser checks passed in {elapsed:.1f} s (of which {spent})")


def scenario(run, context, base, args):
    page = context.pages[0] if context.pages else context.new_page()

    # Sign in and read the caseload: the clinician's group, members by need.
    sign_in(run, page, base, args.clinician_token, "/app")
    expect(page.get_by_role("heading", level=1)).to_have_text("Today")
    expect(page.get_by_text(f"{CLINICIAN} (clinician)")).to_be_visible()
    expect(page.locator(f'a[href="/app/groups/{GROUP}"]')).to_be_visible()
    first_row = page.locator("table tbody tr").first
    expect(first_row.locator(".chip").first).to_have_text("Risk item")
    expect(first_row).to_contain_text("PHQ-9 item 9 scored")
    run.check(page.locator(f'a[href="/app/groups/{OTHER_GROUP}"]').count() == 0,
              "the caseload shows no other clinician's group")
    run.ok("the caseload lists the group and puts the risk item first, with its rule")
    check_page(run, page, "today")

    # A member's chart, from the caseload.
    member_link = first_row.locator('a[href^="/app/clients/"]').first
    member = member_link.get_attribute("href").rsplit("/", 1)[1]
    member_link.click()
    page.wait_for_url(f"{base}/app/clients/{member}")
    charts = page.locator("main svg")
    run.check(charts.count() >= 1, f"{member}'s page draws {charts.count()} chart(s)")
    expect(page.locator("main")).to_contain_text("PHQ-9")
    others = set(re.findall(r"cli-\d+", page.locator("main").inner_text())) - {member}
    run.check(not others, f"{member}'s page shows no other member {sorted(others)}")
    check_page(run, page, "member")

    # The group page, open in a second tab that must update by itself.
    page.goto(f"{base}/app/groups/{GROUP}")
    expect(page.locator("table.grid").first).to_be_visible()
    check_page(run, page, "group")
    print_view(run, page, "group")
    watcher = context.new_page()
    watcher.goto(f"{base}/app/groups/{GROUP}")
    caseload = context.new_page()
    caseload.goto(f"{base}/app")
    for tab in (watcher, caseload):
        wait_live(tab)
        no_reload_marker(tab)
    columns_before = watcher.locator("table.grid").first.locator("thead th").count()

    # Schedule a session (yesterday, an hour no demo session uses) through the form.
    yesterday = datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)
    when = f"{yesterday.isoformat()}T07:05"
    page.fill("#starts_at", when)
    page.fill("#utc_offset", "+00:00")
    page.fill("#duration_minutes", "60")
    page.get_by_role("button", name="Schedule").click()
    page.wait_for_load_state("load")
    row = page.locator("tr", has_text=f"{yesterday.isoformat()} 07:05")
    expect(row).to_have_count(1)
    run.ok("scheduled a session through the form")
    expect(watcher.locator("table.grid").first.locator("thead th")).to_have_count(
        columns_before + 1, timeout=LIVE_WITHIN_MS
    )
    run.check(still_same_document(watcher),
              "the group page in the second tab shows the new session without a reload")
    attendance_href = row.get_by_role("link", name="Attendance").get_attribute("href")
    feedback_href = row.get_by_role("link", name="Questionnaire").get_attribute("href")

    if not args.second_store:
        csrf_refusals(run, page, base, attendance_href)
    first_member = keyboard_attendance(run, page, base, watcher, attendance_href)
    phq9(run, page, base, watcher, caseload, feedback_href, (member, first_member))
    if args.second_store:
        return
    forbidden_and_admin(run, page, base, args, (watcher, caseload))


def csrf_refusals(run, page, base, attendance_href):
    """The attendance form with a wrong CSRF token, then without one, is refused with
    nothing recorded."""
    for how, change in (
        ("a wrong CSRF token", "f.querySelector('[name=csrf]').value = 'circle_forged'"),
        ("no CSRF token", "f.querySelector('[name=csrf]').remove()"),
    ):
        page.goto(f"{base}{attendance_href}")
        page.locator("form[action$='/attendance'] input[type=radio][value=excused]").first.check()
        run.expected.append((403, attendance_href))
        with page.expect_navigation():
            page.evaluate(f"() => {{ const f = document.querySelector(\"form[action$='/attendance']\"); {change}; f.submit() }}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("403")
        expect(page.locator("main")).to_contain_text("nothing was recorded")
        run.ok(f"an attendance form with {how} is refused (403 page)")
        if how == "no CSRF token":
            check_page(run, page, "csrf-refused")
    page.goto(f"{base}{attendance_href}")
    recorded = page.locator("form[action$='/attendance'] tbody tr td:last-child").all_inner_texts()
    run.check(recorded and all(r == "not yet" for r in recorded),
              f"nothing was recorded by the refused forms {recorded}")


def keyboard_attendance(run, page, base, watcher, attendance_href):
    """Attendance with the keyboard alone: Tab to the first member's marks, an arrow
    key to "late", Space to keep it, Tab to the button, Enter."""
    page.goto(f"{base}{attendance_href}")
    check_page(run, page, "attendance")
    form = page.locator("form[action$='/attendance']")
    first_radio_id = form.locator("input[type=radio]").first.get_attribute("id")
    first_member = re.match(r"s-(.+)-present$", first_radio_id).group(1)
    page.locator("body").focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == first_radio_id:
            break
    run.check(page.evaluate("() => document.activeElement.id") == first_radio_id,
              "Tab reaches the first member's attendance marks")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    run.check(page.is_checked(f"#s-{first_member}-late"), f"the arrow key marks {first_member} late")
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent") == "Record attendance":
            break
    run.check(page.evaluate("() => document.activeElement.textContent") == "Record attendance",
              "Tab reaches the Record attendance button")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_load_state("load")
    grid = page.locator("table.grid").first
    first_member_row = grid.locator("tbody tr", has=page.locator(f'a[href="/app/clients/{first_member}"]'))
    expect(first_member_row.locator("td").last).to_have_class(re.compile("att-late"))
    run.ok(f"the keyboard alone recorded the attendance ({first_member} late, the rest present)")
    watcher_row = watcher.locator("table.grid").first.locator(
        "tbody tr", has=watcher.locator(f'a[href="/app/clients/{first_member}"]'))
    expect(watcher_row.locator("td").last).to_have_class(re.compile("att-late"), timeout=LIVE_WITHIN_MS)
    run.check(still_same_document(watcher), "the second tab shows the attendance without a reload")
    return first_member


def phq9(run, page, base, watcher, caseload, feedback_href, already_seen):
    """A PHQ-9 through the form: an item out of range is refused beside its field by
    the server (the browser's own check is bypassed to reach it), then a valid one
    with item 9 scored is recorded, and reaches the open tabs."""
    page.goto(f"{base}{feedback_href}")
    if page.get_by_role("heading", level=1).inner_text().split(" ")[0] != "PHQ-9":
        page.get_by_role("link", name="PHQ-9", exact=True).click()
        page.wait_for_load_state("load")
    expect(page.get_by_role("heading", level=1)).to_contain_text("PHQ-9")
    check_page(run, page, "questionnaire")
    members = page.locator("select#client_id option").all_inner_texts()
    scored = next(m for m in members if m not in already_seen)
    page.select_option("select#client_id", scored)
    items = page.locator("form input[type=number]")
    run.check(items.count() == 9, f"the PHQ-9 form has 9 items ({items.count()})")
    for i in range(9):
        items.nth(i).fill("1")
    items.nth(0).fill("7")
    run.check(not page.evaluate("() => document.querySelector('form.stack').checkValidity()"),
              "the browser refuses an item above 3 before sending")
    run.expected.append((400, feedback_href.split("?")[0]))
    page.evaluate("() => { document.querySelector('form.stack').noValidate = true }")
    with page.expect_navigation():
        page.get_by_role("button", name="Record PHQ-9").click()
    first_item = page.locator("form input[type=number]").first
    described = first_item.get_attribute("aria-describedby")
    run.check(bool(described) and page.locator(f"#{described}").is_visible(),
              f"the server's refusal is shown beside item 1 ({described})")
    check_page(run, page, "questionnaire-refused")
    items = page.locator("form input[type=number]")
    items.nth(0).fill("2")
    items.nth(8).fill("1")
    page.select_option("select#client_id", scored)
    with page.expect_navigation():
        page.get_by_role("button", name="Record PHQ-9").click()
    sent = time.monotonic()
    run.ok(f"recorded a PHQ-9 for {scored} through the form")
    risk_row = caseload.locator("tr", has=caseload.locator(f'a[href="/app/clients/{scored}"]'))
    expect(risk_row).to_contain_text("PHQ-9 item 9 scored 1", timeout=LIVE_WITHIN_MS)
    reached = (time.monotonic() - sent) * 1000
    run.check(still_same_document(caseload),
              f"the open caseload shows {scored}'s risk item without a reload "
              f"(within {reached:.0f} ms of the answer to the form)")
    scores = watcher.locator("section", has=watcher.get_by_role("heading", name="Latest scores"))
    expect(scores.locator("tr", has_text=scored)).to_contain_text("10", timeout=LIVE_WITHIN_MS)
    run.check(still_same_document(watcher), "the second tab shows the new score without a reload")


def forbidden_and_admin(run, page, base, args, live_tabs):
    """Another clinician's group and member, by URL: the 403 page, none of their
    data. Then the admin's pages."""
    for path in (f"/app/groups/{OTHER_GROUP}", f"/app/clients/{OTHER_MEMBER}"):
        run.expected.append((403, path))
        response = page.goto(f"{base}{path}")
        run.check(response.status == 403, f"{path} answers {response.status} to {CLINICIAN}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("403")
        run.check(OTHER_MEMBER not in page.content(), f"the 403 page for {path} shows no data")
    check_page(run, page, "forbidden")

    for tab in live_tabs:
        tab.close()
    page.goto(f"{base}/app")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/app/sign-in")
    run.ok("signed out")
    sign_in(run, page, base, args.admin_token, "/app", check=False)
    check_page(run, page, "today-admin")
    page.get_by_role("link", name="Practice").click()
    page.wait_for_url(f"{base}/app/practice")
    expect(page.locator("main svg").first).to_be_visible()
    check_page(run, page, "practice")
    page.get_by_role("link", name="Audit").click()
    page.wait_for_url(f"{base}/app/audit")
    check_page(run, page, "audit")
    # A group's history from the Audit page: read-only, personal data sealed.
    page.locator("#history-group").select_option(GROUP)
    page.get_by_role("button", name="Show history").click()
    page.wait_for_url(f"{base}/app/audit/history?**")
    expect(page.get_by_role("heading", level=1)).to_contain_text("history")
    run.check(page.locator("table.history tbody tr").count() > 0, "the group's history lists its events")
    check_page(run, page, "history")


def without_javascript(run, context, base, args):
    """The pages and forms work with JavaScript off (only live updates need it)."""
    page = context.pages[0] if context.pages else context.new_page()
    # The one-click link `circle demo` prints.
    page.goto(f"{base}/app/sign-in?token={args.clinician_token}")
    page.wait_for_url(f"{base}/app")
    run.ok("without JavaScript: signed in by the demo's one-click link")
    risk_row = page.locator("table tbody tr").first
    member = risk_row.locator('a[href^="/app/clients/"]').first.inner_text()
    expect(risk_row.locator(".chip").first).to_have_text("Risk item")
    risk_row.get_by_role("button", name="Mark reviewed").click()
    page.wait_for_load_state("load")
    page.goto(f"{base}/app")
    row = page.locator("tr", has=page.locator(f'a[href="/app/clients/{member}"]'))
    run.check("not yet reviewed" not in row.inner_text(),
              f"without JavaScript: marking {member}'s risk item reviewed is recorded")
    page.goto(f"{base}/app/groups/{GROUP}")
    run.check(page.locator("main svg").count() >= 1 and page.locator("table.grid").count() >= 1,
              "without JavaScript: the group page shows its grid and chart")
    href = page.locator("tr", has=page.get_by_role("link", name="Attendance")).last \
        .get_by_role("link", name="Attendance").get_attribute("href")
    page.goto(f"{base}{href}")
    form = page.locator("form[action$='/attendance']")
    radio = form.locator("input[type=radio][value=excused]").first
    client = re.match(r"s-(.+)-excused$", radio.get_attribute("id")).group(1)
    radio.check()
    with page.expect_navigation():
        form.get_by_role("button", name="Record attendance").click()
    page.goto(f"{base}{href}")
    run.check(page.locator(f"#s-{client}-excused").is_checked()
              and "excused" in page.locator("tr", has=page.locator(f"#m-{client}")).inner_text(),
              f"without JavaScript: the attendance form records {client} excused")


if __name__ == "__main__":
    main()
