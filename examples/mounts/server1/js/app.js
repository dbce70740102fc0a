// vend sample script (served from server1)
document.addEventListener("DOMContentLoaded", function () {
  var el = document.getElementById("served-by");
  if (el) { el.textContent = "This page was served by vend."; }
});
