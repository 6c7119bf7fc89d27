"""The admin console end to end in a real browser (headless Chromium):
sign in, create a key and read its secret once, use it (ALLOW), revoke it
from its page (badge Revoked, DENY), see the audit entry; an edit racing
another edit reports the conflict; a keys:read session has no change
buttons and is refused when it posts anyway. Each page's screenshot is
saved in the output folder."""

from selenium.webdriver.common.by import By
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


def create_key(browser, keygate, name, scopes):
    browser.get(f"{keygate.url}/console/keys/new")
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "scopes").send_keys(scopes)
    browser.find_element(By.CSS_SELECTOR, "input[name=expiry][value='30d']").click()
    browser.find_element(By.CSS_SELECTOR, "form.key-form button[type=submit]").click()
    wait_for_text(browser, "will not be shown again", "Error:")
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error, .field-error")]
    assert "will not be shown again" in browser.page_source, errors
    secret = browser.find_element(By.ID, "secret").get_attribute("value")
    assert secret.startswith("kg_live_")
    return secret


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

    browser.get(f"{keygate.url}/console/keys/new")
    shot(browser, out_dir, "create")
    secret = create_key(browser, keygate, "checkout service", "dns:read dns:write")
    browser.find_element(By.CSS_SELECTOR, "button[data-copy=secret]").click()
    shot(browser, out_dir, "secret")
    assert keygate.authorize(secret, "dns:read") == 200

    browser.find_element(By.LINK_TEXT, "Go to the key's page").click()
    wait_for_text(browser, "<h2>Usage</h2>")
    assert secret not in browser.page_source
    assert badge(browser) == "Active"
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    shot(browser, out_dir, "detail")

    browser.find_element(By.ID, "reason").send_keys("leaked in a log")
    browser.find_element(By.ID, "confirm").send_keys("checkout service")
    browser.find_element(By.CSS_SELECTOR, "form.revoke button[type=submit]").click()
    wait_for_text(browser, "The key is revoked.", "Error:")
    assert "The key is revoked." in browser.page_source
    assert badge(browser) == "Revoked"
    assert keygate.authorize(secret, "dns:read") in (401, 403)

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


def test_an_edit_racing_another_edit_reports_the_conflict(browser, keygate, out_dir):
    create_key(browser, keygate, "race", "dns:read")
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
    reader = create_key(browser, keygate, "auditor", "keys:read")
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
