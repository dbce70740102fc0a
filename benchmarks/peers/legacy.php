<?php
/*
 * The design vend replaces, reconstructed for the benchmark: Apache prefork with mod_php,
 * every request rewritten to this script, which walks the mounts in order and sends the
 * first regular file it finds with readfile().
 *
 * It is kept as plain as the original: one stat per mount through file_exists(), no
 * validators checked (no 304), no Range (a Range request gets the whole file with 200),
 * and the body copied through PHP's output layer rather than sendfile.
 *
 * The mounts come from the LEGACY_MOUNTS variable (colon-separated absolute paths, set
 * with SetEnv by benchmarks/compare's generated Apache config); the fallback is the
 * production list of NFS mounts.
 */

$mounts = explode(':', $_SERVER['LEGACY_MOUNTS'] ?? '/server1/content:/server2/content');

$types = [
    'html' => 'text/html', 'htm' => 'text/html', 'txt' => 'text/plain',
    'css' => 'text/css', 'js' => 'application/javascript', 'pdf' => 'application/pdf',
    'gif' => 'image/gif', 'jpg' => 'image/jpeg', 'png' => 'image/png',
];

$path = rawurldecode(parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?? '');
if ($path === '' || strpos($path, '..') !== false || strpos($path, "\0") !== false) {
    http_response_code(404);
    exit;
}

foreach ($mounts as $mount) {
    $file = $mount . $path;
    if (file_exists($file) && !is_dir($file)) {
        $ext = strtolower(pathinfo($file, PATHINFO_EXTENSION));
        header('Content-Type: ' . ($types[$ext] ?? 'application/octet-stream'));
        header('Content-Length: ' . filesize($file));
        header('Last-Modified: ' . gmdate('D, d M Y H:i:s', filemtime($file)) . ' GMT');
        readfile($file);
        exit;
    }
}

http_response_code(404);
