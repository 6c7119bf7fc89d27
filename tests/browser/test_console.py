"""The admin console end to end in a real browser (headless Chromium):
sign in, create a key with scopes typed as chips (two added, one removed)
and read its secret once, use it through the Authorize RPC (ALLOW for the
scope kept, SCOPE_MISSING for the one removed), revoke it from its page
(badge Revoked, DENY with KEY_REVOKED), see the audit entry; scope chips
mark an invalid scope as the API's grammar does, work from the keyboard,
and the server's own field error still shows; an edit racing another edit
reports the conflict; a keys:read session has no change buttons and is
refused when it posts anyway. Each page's screenshot is saved in the output
folder."""

from keygate.v1 import authorization_pb2 as authz
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait


def wait_for_text(browser, *texts):
    """Waits until the page (after a submit) shows one of `texts`."""
    WebDriverWait(browser, 10).until(
        lambda d: any(t in d.page_source for t in texts))


def shot(browser, out_dir, name):
    browser.save_screenshot(str(out_dir / f"{name}.png"))


def sign_in(browser, keygate, key):
    browser.get(f"{keygate.url}/console/")
    field = browser.find_element(By.ID, "key")
    field.send_keys(key)
    field.submit()
    wait_for_text(browser, "<h1>Keys</h1>")


def chips(browser):
    """The scopes shown as chips, in order."""
    return [c.get_attribute("data-scope")
            for c in browser.find_elements(By.CSS_SELECTOR, "ul.chips li.chip")]


def scopes_field(browser):
    """What the form will post as `scopes` (the hidden textarea)."""
    return browser.find_element(By.ID, "scopes").get_attribute("value")


def page_left(element):
    """A wait condition: `element`'s page has been replaced. Selenium's
    `staleness_of` expects a stale-element error, but Chromium, asked about
    an element while its page is being replaced, may instead answer with an
    inspector error (the node "does not belong to the document"), which
    means the same thing; any other error is a real one."""
    def left(_driver):
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in (error.msg or ""):
                return True
            raise
    return left


def submit_key_form(browser):
    """Submits the create form and waits for the next page."""
    browser.find_element(By.CSS_SELECTOR, "input[name=expiry][value='30d']").click()
    form = browser.find_element(By.CSS_SELECTOR, "form.key-form")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 10).until(page_left(form))


def open_create_form(browser, keygate, name):
    browser.get(f"{keygate.url}/console/keys/new")
    browser.find_element(By.ID, "name").send_keys(name)


def read_secret(browser):
    wait_for_text(browser, "will not be shown again", "Error:")
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error, .field-error")]
    assert "will not be shown again" in browser.page_source, errors
    secret = browser.find_element(By.ID, "secret").get_attribute("value")
    assert secret.startswith("kg_live_")
    return secret


def create_key(browser, keygate, name, scopes):
    """Creates a key with `scopes` (a list), each typed as a chip."""
    open_create_form(browser, keygate, name)
    entry = browser.find_element(By.ID, "scopes-entry")
    for scope in scopes:
        entry.send_keys(scope, Keys.ENTER)
    assert chips(browser) == scopes
    submit_key_form(browser)
    return read_secret(browser)


def script_errors(browser):
    """Script errors and CSP violations the page reported since last asked."""
    return [e["message"] for e in browser.get_log("browser")
            if "Uncaught" in e["message"] or "Content Security Policy" in e["message"]]


def allowed(response):
    return authz.Decision.Name(response.decision) == "DECISION_ALLOW"


def denied(response, reason):
    """Whether `response` is a deny for `reason` (such as "KEY_REVOKED")."""
    return (authz.Decision.Name(response.decision), authz.DenyReason.Name(response.reason)) \
        == ("DECISION_DENY", f"DENY_REASON_{reason}")


def sign_out(browser):
    browser.find_element(By.CSS_SELECTOR, ".who button[type=submit]").click()
    wait_for_text(browser, "You are signed out.")
    assert "You are signed out." in browser.page_source


def badge(browser):
    return browser.find_element(By.CSS_SELECTOR, "main .badge").get_attribute("data-status")


def test_create_use_revoke_and_audit(browser, keygate, out_dir):
    browser.get(f"{keygate.url}/console/")
    shot(browser, out_dir, "sign-in")
    sign_in(browser, keygate, keygate.admin_key)

    # Scopes as chips: Enter and a comma each add one; a chip's button
    # removes it; the form posts what is left.
    open_create_form(browser, keygate, "checkout service")
    entry = browser.find_element(By.ID, "scopes-entry")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=scopes-entry]").text == "Scopes"
    assert not browser.find_element(By.ID, "scopes").is_displayed()
    entry.send_keys("dns:read", Keys.ENTER, "dns:write", ",")
    assert chips(browser) == ["dns:read", "dns:write"]
    assert entry.get_attribute("value") == ""
    assert scopes_field(browser) == "dns:read dns:write"
    assert not browser.find_elements(By.CSS_SELECTOR, "ul.chips li.invalid")
    shot(browser, out_dir, "create")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Remove scope dns:write']").click()
    assert chips(browser) == ["dns:read"]
    assert scopes_field(browser) == "dns:read"
    assert not script_errors(browser)
    submit_key_form(browser)
    secret = read_secret(browser)
    browser.find_element(By.CSS_SELECTOR, "button[data-copy=secret]").click()
    shot(browser, out_dir, "secret")

    # The key, used through the Authorize RPC, has exactly the scope kept.
    response = keygate.authorize(secret, "dns:read")
    assert allowed(response), response
    response = keygate.authorize(secret, "dns:write")
    assert denied(response, "SCOPE_MISSING"), response
    assert list(response.missing_scopes) == ["dns:write"]

    browser.find_element(By.LINK_TEXT, "Go to the key's page").click()
    wait_for_text(browser, "<h2>Usage</h2>")
    assert secret not in browser.page_source
    assert badge(browser) == "Active"
    scopes = browser.find_elements(By.XPATH, "//dt[.='Scopes']/following-sibling::dd[1]/code")
    assert [s.text for s in scopes] == ["dns:read"]
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    shot(browser, out_dir, "detail")

    browser.find_element(By.ID, "reason").send_keys("leaked in a log")
    browser.find_element(By.ID, "confirm").send_keys("checkout service")
    browser.find_element(By.CSS_SELECTOR, "form.revoke button[type=submit]").click()
    wait_for_text(browser, "The key is revoked.", "Error:")
    assert "The key is revoked." in browser.page_source
    assert badge(browser) == "Revoked"
    response = keygate.authorize(secret, "dns:read")
    assert denied(response, "KEY_REVOKED"), response

    browser.get(f"{keygate.url}/console/audit")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")
    assert "RevokeKey" in rows[0].text and "leaked in a log" in rows[0].text
    shot(browser, out_dir, "audit")

    browser.get(f"{keygate.url}/console/keys")
    assert secret not in browser.page_source
    shot(browser, out_dir, "keys")
    browser.set_window_size(390, 844)
    shot(browser, out_dir, "keys-phone")
    browser.set_window_size(1280, 800)


def test_scope_chips_check_the_grammar_and_work_from_the_keyboard(browser, keygate, out_dir):
    open_create_form(browser, keygate, "chips")
    entry = browser.find_element(By.ID, "scopes-entry")
    # Space adds too; an invalid scope is a chip marked invalid, with the
    # reason in words next to the field.
    entry.send_keys("billing:* ", "DNS:Read", Keys.ENTER, "dns:", Keys.ENTER)
    assert chips(browser) == ["billing:*", "DNS:Read", "dns:"]
    invalid = browser.find_elements(By.CSS_SELECTOR, "ul.chips li.chip.invalid")
    assert [c.get_attribute("data-scope") for c in invalid] == ["DNS:Read", "dns:"]
    problems = browser.find_element(By.ID, "scopes-problems").text
    assert "“DNS:Read” is not a valid scope: bad resource" in problems, problems
    assert "“dns:” is not a valid scope: bad action" in problems, problems
    assert entry.get_attribute("aria-invalid") == "true"
    assert "scopes-problems" in entry.get_attribute("aria-describedby")
    # A duplicate is not added twice.
    entry.send_keys("billing:*", Keys.ENTER)
    assert chips(browser) == ["billing:*", "DNS:Read", "dns:"]
    # Backspace in the empty box removes the last chip.
    entry.send_keys(Keys.BACKSPACE)
    assert chips(browser) == ["billing:*", "DNS:Read"]
    assert "dns:”" not in browser.find_element(By.ID, "scopes-problems").text
    shot(browser, out_dir, "create-invalid-scope")
    # The server refuses what the browser marked, next to the field, and
    # the page comes back with the chips as they were.
    submit_key_form(browser)
    wait_for_text(browser, "Error:")
    error = browser.find_element(By.ID, "scopes-error").text
    assert "DNS:Read" in error and "scopes[1]" in error, error
    assert chips(browser) == ["billing:*", "DNS:Read"]
    entry = browser.find_element(By.ID, "scopes-entry")
    assert "scopes-error" in entry.get_attribute("aria-describedby")
    # From the keyboard: Shift+Tab from the box reaches the last chip's
    # remove button, and Enter on it removes that chip.
    entry.click()
    entry.send_keys(Keys.SHIFT, Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.get_attribute("aria-label") == "Remove scope DNS:Read"
    focused.send_keys(Keys.ENTER)
    assert chips(browser) == ["billing:*"]
    assert not browser.find_element(By.ID, "scopes-problems").is_displayed()
    assert scopes_field(browser) == "billing:*"
    assert not script_errors(browser)
    submit_key_form(browser)
    secret = read_secret(browser)
    assert allowed(keygate.authorize(secret, "billing:charge"))
    assert denied(keygate.authorize(secret, "dns:read"), "SCOPE_MISSING")


def test_an_edit_racing_another_edit_reports_the_conflict(browser, keygate, out_dir):
    create_key(browser, keygate, "race", ["dns:read"])
    browser.find_element(By.LINK_TEXT, "Go to the key's page").click()
    wait_for_text(browser, "<h2>Usage</h2>")
    edit_url = browser.current_url + "/edit"
    first = browser.current_window_handle
    browser.get(edit_url)
    browser.switch_to.new_window("tab")
    browser.get(edit_url)
    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys("race (theirs)")
    name.submit()
    wait_for_text(browser, "Your changes are saved.", "Error:")
    assert "Your changes are saved." in browser.page_source
    browser.close()
    browser.switch_to.window(first)
    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys("race (mine)")
    name.submit()
    wait_for_text(browser, "changed since this page was loaded", "Your changes are saved.")
    assert "changed since this page was loaded" in browser.page_source
    shot(browser, out_dir, "edit-conflict")
    browser.get(edit_url.removesuffix("/edit"))
    assert "race (theirs)" in browser.page_source


def test_a_read_session_cannot_change_keys(browser, keygate, out_dir):
    reader = create_key(browser, keygate, "auditor", ["keys:read"])
    browser.find_element(By.LINK_TEXT, "Go to the key's page").click()
    wait_for_text(browser, "<h2>Usage</h2>")
    target = browser.current_url
    sign_out(browser)
    sign_in(browser, keygate, reader)
    assert not browser.find_elements(By.LINK_TEXT, "Create key")
    browser.get(target)
    assert not browser.find_elements(By.CSS_SELECTOR, "form.revoke")
    assert not browser.find_elements(By.CSS_SELECTOR, "form[action$='/disable']")
    shot(browser, out_dir, "detail-read-only")
    # Post anyway, with the session's own CSRF token: the API refuses.
    browser.execute_script(
        """
        const form = document.createElement('form');
        form.method = 'post';
        form.action = arguments[0] + '/disable';
        const csrf = document.querySelector('input[name=csrf]').cloneNode();
        form.appendChild(csrf);
        document.body.appendChild(form);
        form.submit();
        """,
        target,
    )
    wait_for_text(browser, "Error:")
    error = browser.find_element(By.CSS_SELECTOR, ".error").text
    assert "keys:write" in error, error
    assert not browser.find_elements(By.CSS_SELECTOR, "form.revoke")
    shot(browser, out_dir, "refused")
    sign_out(browser)
