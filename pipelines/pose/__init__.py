"""Pose extraction for stage 0: keypoints (POSE_KEYPOINT frames) and the OpenPose-style skeleton image.

Kept free of heavy imports: `backends.make_estimator` imports the chosen backend (onnxruntime, torch,
mmpose, mediapipe) only when it is asked for.
"""
