"""What each view of the app computes and shows, without Gradio: the reverse-step breakdown, the training and
likelihood views, comparisons, the 2-D lab's pictures, figures for slides, exports, and each user's state."""
